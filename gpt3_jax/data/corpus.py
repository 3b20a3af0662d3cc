"""One call from a data config to a tokenizer and memory-mapped train/validation token streams per source.

`prepare_corpus(cfg)`: for each source of `cfg.sources` (default: one 'text_files' source from `cfg.paths`,
the embedded stdlib corpus when empty; see `sources`), prepares the text (TFDS), trains one tokenizer on a
weighted sample of all text sources' train splits (or loads `cfg.tokenizer_path`), tokenizes each text
source once, and maps token-file sources in place. Each step is cached in `cfg.data_dir` and reused:

  local_text_files/fp<inputs fingerprint>/1.0.0/    TFDS ArrayRecord dataset of a text_files source
  tokenizers/<sources>-v<vocab>[-<options>].model   SentencePiece model
  tokens/<source>-v<vocab>-<tokenizer hash>/{train,validation}.bin(+.json)   nanoGPT layout + sidecar

Every file is written atomically (temporary name, then rename). Preparation holds an exclusive
`fcntl.flock` on `data_dir/.prepare.lock`, so several processes on one machine sharing `data_dir` can all
call `prepare_corpus`: the first prepares, the others wait and then reuse. (flock is per machine: on a
shared network filesystem, prepare on one host first.)

Training reads the weighted mixture of the sources' train streams (`Corpus.mixture`, see `mixture`).
`Corpus.train_tokens` / `valid_tokens` are the FIRST source's streams (evaluation and the unigram baseline);
every source's streams are in `Corpus.streams`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import time
from typing import Iterator, Optional

from absl import logging
import grain
import numpy as np

from gpt3_jax.data import mixture as mixture_lib
from gpt3_jax.data import sources as sources_lib
from gpt3_jax.data import token_files
from gpt3_jax.data import token_store
from gpt3_jax.data import tokenizer as tokenizer_lib
from gpt3_jax.data.sources import SourceConfig


def _default_data_dir() -> str:
  return os.environ.get("GPT3_JAX_DATA_DIR") or os.path.expanduser("~/.cache/gpt3_jax")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """What to train on.

  Attributes:
    sources: the data sources (`SourceConfig`s); empty: one 'text_files' source of `paths`/`extensions`.
    weights: sampling weight per source (normalized); empty: equal weights.
    paths: with no `sources`: files, directories (searched recursively) or globs; empty means the embedded
      default corpus, the Python standard library's source.
    extensions: with no `sources`: file extensions to take from directories and globs; None: ('.py',) for
      the default corpus, else text_files.DEFAULT_EXTENSIONS.
    data_dir: cache directory (default: $GPT3_JAX_DATA_DIR, else ~/.cache/gpt3_jax).
    vocab_size: tokenizer vocabulary size (with only token-file sources and no tokenizer: the model's
      vocabulary, which every id must be below; e.g. 50257 for GPT-2 token files).
    validation_fraction: expected fraction of files (or of a stream's tail) held out for validation.
    seed: data-order seed (used by the training iterator, not by preparation).
    tokenizer_train_chars: characters sampled from the text sources' train splits to train the tokenizer,
      split between text sources by weight.
    tokenizer_path: an existing SentencePiece model (from `train_tokenizer`) or Hugging Face tokenizer directory
      (tokenizer.json, or vocab.json + merges.txt) to use instead of training one.
    character_coverage: fraction of characters with their own piece; the rest are spelled in bytes.
    byte_fallback: spell out-of-vocabulary characters as bytes (lossless); False maps them to <unk>.
    special_tokens: extra pieces never split or merged, besides <|endoftext|> and newline.
    split_digits: split numbers into single digits.
    tokenize_workers: grain worker processes tokenizing text sources (0: threads). Workers need absl
      flags parsed and a `__main__` guard (the CLIs and main.py qualify; tests and notebooks do not).
  """
  sources: tuple[SourceConfig, ...] = ()
  weights: tuple[float, ...] = ()
  paths: tuple[str, ...] = ()
  extensions: Optional[tuple[str, ...]] = None
  data_dir: str = dataclasses.field(default_factory=_default_data_dir)
  vocab_size: int = 8192
  validation_fraction: float = 0.02
  seed: int = 0
  tokenizer_train_chars: int = 20_000_000
  tokenizer_path: Optional[str] = None
  character_coverage: float = 1.0
  byte_fallback: bool = True
  special_tokens: tuple[str, ...] = ()
  split_digits: bool = False
  tokenize_workers: int = 0

  def __post_init__(self):
    for name, ok, example in (("vocab_size", isinstance(self.vocab_size, int) and self.vocab_size <= 0, 8192),
                              ("tokenizer_train_chars", isinstance(self.tokenizer_train_chars, int)
                               and self.tokenizer_train_chars <= 0, 20_000_000)):
      if ok:
        raise ValueError(f"DataConfig.{name} must be positive, got {getattr(self, name)}; e.g. DataConfig.{name} "
                         f"= {example}")
    fraction = self.validation_fraction
    if isinstance(fraction, (int, float)) and not 0 <= fraction < 1:
      raise ValueError(f"DataConfig.validation_fraction must be in [0, 1), got {fraction}; e.g. "
                       f"DataConfig.validation_fraction = 0.02")


@dataclasses.dataclass(frozen=True)
class SourceStreams:
  """One prepared source.

  Attributes:
    name: the source's name in metrics.
    train_tokens: packed train stream (read-only memmap), documents delimited by EOT.
    valid_tokens: packed validation stream (read-only).
    train_tokens_path: the train token file.
    valid_tokens_path: the validation token file; equal to train_tokens_path when the validation stream
      is the held-out tail of the train file (then train_tokens is its head).
    skipped: documents skipped while preparing, by reason (see `documents`).
    skipped_files: text files skipped whole (not UTF-8, or empty).
    dataset_dir: the TFDS dataset directory ('' for token files).
  """
  name: str
  train_tokens: np.ndarray
  valid_tokens: np.ndarray
  train_tokens_path: str
  valid_tokens_path: str
  skipped: dict[str, int]
  skipped_files: tuple[str, ...]
  dataset_dir: str


@dataclasses.dataclass(frozen=True)
class Corpus:
  """A prepared corpus.

  Attributes:
    tokenizer: the tokenizer (None when every source is token files and no tokenizer_path is given).
    train_tokens: the first source's train stream.
    valid_tokens: the first source's validation stream.
    tokenizer_path: the SentencePiece model file (None without a tokenizer).
    train_tokens_path: the first source's train token file.
    valid_tokens_path: the first source's validation token file (see `SourceStreams`).
    dataset_dir: the first text source's TFDS dataset directory ('' when there is none).
    skipped_files: text files skipped as empty or not UTF-8, over all sources.
    streams: every source's streams, in `DataConfig.sources` order.
    weights: normalized sampling weights, one per source.
    vocab_size: the vocabulary size (the tokenizer's, else DataConfig.vocab_size).
    fingerprint: identifies the token streams and weights; a checkpoint's data position is only
      meaningful for the same fingerprint.
  """
  tokenizer: Optional[tokenizer_lib.TextTokenizer]
  train_tokens: np.ndarray
  valid_tokens: np.ndarray
  tokenizer_path: Optional[str]
  train_tokens_path: str
  valid_tokens_path: str
  dataset_dir: str
  skipped_files: tuple[str, ...]
  streams: tuple[SourceStreams, ...] = ()
  weights: tuple[float, ...] = ()
  vocab_size: int = 0
  fingerprint: str = ""

  def mixture(self, *, seq_len: int, global_batch_size: int, seed: int) -> mixture_lib.Mixture:
    """The weighted mixture of the train streams (`Mixture.iterator(...)`, `Mixture.metrics(step)`)."""
    constant = {}
    for s in self.streams:
      constant[f"data/{s.name}/skipped_documents"] = float(sum(s.skipped.values()))
    return mixture_lib.Mixture([s.train_tokens for s in self.streams], self.weights, seq_len=seq_len,
                               global_batch_size=global_batch_size, seed=seed,
                               names=[s.name for s in self.streams], constant_metrics=constant)

  def train_iterator(self, *, seq_len: int, global_batch_size: int, seed: int, process_index: int = 0,
                     process_count: int = 1) -> grain.DatasetIterator:
    """This process's rows of each global batch of the mixture; see `Mixture.iterator`."""
    return self.mixture(seq_len=seq_len, global_batch_size=global_batch_size, seed=seed).iterator(
        process_index=process_index, process_count=process_count)


def resolved_sources(cfg: DataConfig) -> tuple[tuple[SourceConfig, ...], tuple[float, ...]]:
  """The sources (named, the legacy `paths` source when none) and their normalized weights.

  Raises:
    ValueError: weights that do not match the sources, are negative or all zero; duplicate names.
  """
  sources = cfg.sources or (SourceConfig(name="text", kind="text_files", paths=tuple(cfg.paths),
                                         extensions=cfg.extensions),)
  sources = tuple(dataclasses.replace(s, name=s.name or f"source{i}") for i, s in enumerate(sources))
  names = [s.name for s in sources]
  if len(set(names)) != len(names):
    raise ValueError(f"DataConfig.sources has duplicate names {names}; give each SourceConfig a name.")
  weights = tuple(cfg.weights) or (1.0,) * len(sources)
  if len(weights) != len(sources):
    raise ValueError(f"DataConfig.weights has {len(weights)} entries for {len(sources)} sources {names}.")
  if any(w < 0 for w in weights) or sum(weights) <= 0:
    raise ValueError(f"DataConfig.weights {weights} must be non-negative and not all zero.")
  return sources, tuple(float(w) / sum(weights) for w in weights)


def check_sources(cfg: DataConfig) -> None:
  """Cheap checks before any preparation (paths exist, globs match, weights fit); raises ValueError."""
  for source in resolved_sources(cfg)[0]:
    sources_lib.check_paths(source)


@contextlib.contextmanager
def _locked(directory: str) -> Iterator[None]:
  """Holds an exclusive flock on `directory/.prepare.lock`."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, ".prepare.lock"), "a") as f:
    start = time.monotonic()
    fcntl.flock(f, fcntl.LOCK_EX)
    waited = time.monotonic() - start
    if waited > 1:
      logging.info("Waited %.1f s for another process preparing %s", waited, directory)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _sample_texts(text_sources, weights, max_chars: int) -> Iterator[str]:
  """A deterministic sample of the text sources' train documents, `max_chars` split by weight.

  Documents are visited in a fixed shuffled order (grain's index shuffle, O(1) memory), so the sample
  spreads over the whole split rather than its first files.
  """
  total = sum(weights)
  for src, weight in zip(text_sources, weights):
    budget = max_chars * weight / total if total else max_chars / len(text_sources)
    order = grain.MapDataset.range(len(src.train)).shuffle(seed=0)
    used = 0
    for i in range(len(src.train)):
      if used >= budget:
        break
      text = token_store._text_of(src.train[int(order[i])], src.text_field)  # pylint: disable=protected-access
      text = text[:int(budget - used) + 1]
      used += len(text)
      yield text


def _tokenizer_name(cfg: DataConfig, text_sources) -> str:
  name = (text_sources[0].fingerprint if len(text_sources) == 1 else
          "mix" + hashlib.sha256(" ".join(t.fingerprint for t in text_sources).encode()).hexdigest()[:20])
  options = (cfg.character_coverage, cfg.byte_fallback, tuple(cfg.special_tokens), cfg.split_digits,
             cfg.tokenizer_train_chars)
  if options != (1.0, True, (), False, 20_000_000):  # Defaults keep the names of earlier caches.
    name += "-" + hashlib.sha256(repr(options).encode()).hexdigest()[:8]
  return f"{name}-v{cfg.vocab_size}"


def train_corpus_tokenizer(cfg: DataConfig, model_path: Optional[str] = None) -> tuple[tokenizer_lib.Tokenizer, str]:
  """Prepares the text sources and trains (or reuses) the tokenizer on a weighted sample of them.

  Returns:
    (tokenizer, model path). model_path defaults to data_dir/tokenizers/<sources>-v<vocab>.model.

  Raises:
    ValueError: no text source, or bad sources.
  """
  sources, weights = resolved_sources(cfg)
  texts = [(s, w) for s, w in zip(sources, weights) if s.resolved_kind() != "token_files"]
  if not texts:
    raise ValueError("Training a tokenizer needs at least one text source (text_files or tfds).")
  prepared = [sources_lib.prepare_text_source(s, cfg.data_dir, _fraction(cfg, s)) for s, _ in texts]
  return _train(cfg, prepared, [w for _, w in texts], model_path)


def _train(cfg: DataConfig, prepared, weights, model_path: Optional[str]):
  path = model_path or os.path.join(cfg.data_dir, "tokenizers", _tokenizer_name(cfg, prepared) + ".model")
  start = time.monotonic()
  tok = tokenizer_lib.train_tokenizer(
      _sample_texts(prepared, weights, cfg.tokenizer_train_chars), path, vocab_size=cfg.vocab_size,
      character_coverage=cfg.character_coverage, max_chars=cfg.tokenizer_train_chars,
      byte_fallback=cfg.byte_fallback, special_tokens=cfg.special_tokens, split_digits=cfg.split_digits)
  logging.info("Tokenizer ready in %.1f s: %s", time.monotonic() - start, path)
  return tok, path


def _fraction(cfg: DataConfig, source: SourceConfig) -> float:
  return cfg.validation_fraction if source.validation_fraction is None else source.validation_fraction


def _hold_out_tail(name: str, tokens: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
  cut = len(tokens) - max(1, int(len(tokens) * fraction))
  logging.warning("Source %s has no validation split: holding out its last %d train tokens.", name,
                  len(tokens) - cut)
  return tokens[:cut], tokens[cut:]


def _text_streams(cfg, source, prepared, tok) -> SourceStreams:
  token_dir = os.path.join(cfg.data_dir, "tokens",
                           f"{prepared.fingerprint}-v{cfg.vocab_size}-{tok.fingerprint[:12]}")
  train_path = os.path.join(token_dir, "train.bin")
  valid_path = os.path.join(token_dir, "validation.bin")
  kw = dict(text_field=prepared.text_field, num_workers=cfg.tokenize_workers)
  train = token_store.tokenize_split(prepared.train, tok, train_path, **kw)
  if prepared.validation is not None:
    valid = token_store.tokenize_split(prepared.validation, tok, valid_path, **kw)
  else:  # A single input file: hold out the tail of its stream instead.
    (train, valid), valid_path = _hold_out_tail(source.name, train, _fraction(cfg, source)), train_path
  return SourceStreams(name=source.name, train_tokens=train, valid_tokens=valid, train_tokens_path=train_path,
                       valid_tokens_path=valid_path, skipped=prepared.skipped,
                       skipped_files=prepared.skipped_files, dataset_dir=prepared.dataset_dir)


def _token_file_streams(cfg, source, tok, vocab_size: int) -> SourceStreams:
  def open_checked(path: str) -> np.ndarray:
    meta = token_store._read_sidecar(path)  # pylint: disable=protected-access
    if tok is not None and meta is not None and meta.get("tokenizer_fingerprint") not in (None, tok.fingerprint):
      raise ValueError(f"Token file {path} was made by another tokenizer (fingerprint "
                       f"{meta['tokenizer_fingerprint'][:12]}, this corpus uses {tok.fingerprint[:12]}).")
    dtype = meta["dtype"] if meta is not None else source.token_dtype
    return token_files.open_token_file(path, token_format=source.token_format, dtype=dtype,
                                       vocab_size=vocab_size)

  train = open_checked(source.train_path)
  if source.validation_path:
    valid, valid_path = open_checked(source.validation_path), source.validation_path
  else:
    (train, valid), valid_path = _hold_out_tail(source.name, train, _fraction(cfg, source)), source.train_path
  return SourceStreams(name=source.name, train_tokens=train, valid_tokens=valid,
                       train_tokens_path=source.train_path, valid_tokens_path=valid_path, skipped={},
                       skipped_files=(), dataset_dir="")


def prepare_corpus(cfg: DataConfig) -> Corpus:
  """Prepares (or reuses) the datasets, tokenizer and token files of `cfg`; see the module docstring.

  Raises:
    ValueError: a path does not exist or matches no files, no file is usable text, a TFDS dataset is not
      prepared, a token file is malformed or holds ids >= the vocabulary size, or bad weights.
  """
  sources, weights = resolved_sources(cfg)
  check_sources(cfg)  # Fail fast on bad paths, before waiting for the lock.

  with _locked(cfg.data_dir):
    start = time.monotonic()
    prepared = {s.name: sources_lib.prepare_text_source(s, cfg.data_dir, _fraction(cfg, s))
                for s in sources if s.resolved_kind() != "token_files"}
    logging.info("Text sources ready in %.1f s: %s", time.monotonic() - start, sorted(prepared))
    tok, tokenizer_path = None, None
    if cfg.tokenizer_path:
      tok, tokenizer_path = tokenizer_lib.load_tokenizer(cfg.tokenizer_path), os.path.abspath(cfg.tokenizer_path)
    elif prepared:
      text_weights = [w for s, w in zip(sources, weights) if s.name in prepared]
      tok, tokenizer_path = _train(cfg, list(prepared.values()), text_weights, None)
    vocab_size = tok.vocab_size if tok is not None else cfg.vocab_size
    start = time.monotonic()
    streams = tuple(_text_streams(cfg, s, prepared[s.name], tok) if s.name in prepared
                    else _token_file_streams(cfg, s, tok, vocab_size) for s in sources)
    logging.info("Tokens ready in %.1f s: %s", time.monotonic() - start,
                 {s.name: (len(s.train_tokens), len(s.valid_tokens)) for s in streams})

  first = streams[0]
  identity = [(s.name, len(s.train_tokens), str(s.train_tokens.dtype)) for s in streams]
  fingerprint = hashlib.sha256(repr((identity, weights)).encode()).hexdigest()
  return Corpus(tokenizer=tok, train_tokens=first.train_tokens, valid_tokens=first.valid_tokens,
                tokenizer_path=tokenizer_path, train_tokens_path=first.train_tokens_path,
                valid_tokens_path=first.valid_tokens_path,
                dataset_dir=next((s.dataset_dir for s in streams if s.dataset_dir), ""),
                skipped_files=tuple(f for s in streams for f in s.skipped_files), streams=streams,
                weights=weights, vocab_size=vocab_size, fingerprint=fingerprint)
