"""One call from a data config to a tokenizer and memory-mapped train/validation token streams.

`prepare_corpus(cfg)`: prepares the TFDS dataset of the input files, trains the tokenizer on its train split,
tokenizes both splits; each step is cached in `cfg.data_dir` and reused. Layout of `data_dir`:

  local_text_files/fp<inputs fingerprint>/1.0.0/   TFDS ArrayRecord dataset
  tokenizers/fp<...>-v<vocab>.model                SentencePiece model
  tokens/fp<...>-v<vocab>-<tokenizer hash>/{train,validation}.bin(+.json)

Every file is written atomically (temporary name, then rename). Preparation holds an exclusive
`fcntl.flock` on `data_dir/.prepare.lock`, so several processes on one machine sharing `data_dir` can all
call `prepare_corpus`: the first prepares, the others wait and then reuse. (flock is per machine: on a
shared network filesystem, prepare on one host first.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import time
from typing import Iterator, Optional

from absl import logging
import numpy as np

from gpt3_jax.data import text_files
from gpt3_jax.data import token_store
from gpt3_jax.data import tokenizer as tokenizer_lib


def _default_data_dir() -> str:
  return os.environ.get("GPT3_JAX_DATA_DIR") or os.path.expanduser("~/.cache/gpt3_jax")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """What to train on.

  Attributes:
    paths: files, directories (searched recursively) or globs; empty means the embedded default corpus, the
      Python standard library's source.
    extensions: file extensions to take from directories and globs; None: ('.py',) for the default corpus,
      else ('.txt', '.py', '.md').
    data_dir: cache directory (default: $GPT3_JAX_DATA_DIR, else ~/.cache/gpt3_jax).
    vocab_size: tokenizer vocabulary size.
    validation_fraction: expected fraction of files held out for validation.
    seed: data-order seed (used by the training iterator, not by preparation).
    tokenizer_train_chars: characters of the train split used to train the tokenizer.
  """
  paths: tuple[str, ...] = ()
  extensions: Optional[tuple[str, ...]] = None
  data_dir: str = dataclasses.field(default_factory=_default_data_dir)
  vocab_size: int = 8192
  validation_fraction: float = 0.02
  seed: int = 0
  tokenizer_train_chars: int = 20_000_000


@dataclasses.dataclass(frozen=True)
class Corpus:
  """A prepared corpus.

  Attributes:
    tokenizer: the trained tokenizer.
    train_tokens: packed train stream (read-only memmap), documents delimited by EOT.
    valid_tokens: packed validation stream (read-only).
    tokenizer_path: the SentencePiece model file.
    train_tokens_path: the train token file.
    valid_tokens_path: the validation token file. With a single input file there is no validation file:
      the last `validation_fraction` of the train stream is held out, `train_tokens` / `valid_tokens` are
      its head / tail, and this path equals `train_tokens_path`.
    dataset_dir: the TFDS dataset directory.
    skipped_files: input files skipped as empty or not UTF-8.
  """
  tokenizer: tokenizer_lib.Tokenizer
  train_tokens: np.ndarray
  valid_tokens: np.ndarray
  tokenizer_path: str
  train_tokens_path: str
  valid_tokens_path: str
  dataset_dir: str
  skipped_files: tuple[str, ...]


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


def _texts(data_source) -> Iterator[str]:
  for i in range(len(data_source)):
    yield data_source[i]["text"].decode("utf-8")


def prepare_corpus(cfg: DataConfig) -> Corpus:
  """Prepares (or reuses) the dataset, tokenizer and token files of `cfg`; see the module docstring.

  Raises:
    ValueError: a path does not exist or matches no files, or no file is usable text.
  """
  if cfg.paths:
    paths = list(cfg.paths)
    extensions = cfg.extensions or text_files.DEFAULT_EXTENSIONS
  else:
    paths = text_files.default_corpus_paths()
    extensions = cfg.extensions or text_files.default_corpus_extensions()
  text_files.find_files(paths, extensions)  # Fail fast on bad paths, before waiting for the lock.

  with _locked(cfg.data_dir):
    start = time.monotonic()
    builder = text_files.prepare_text_files(paths, cfg.data_dir, extensions=extensions,
                                            validation_fraction=cfg.validation_fraction)
    name = f"{builder.builder_config.name}-v{cfg.vocab_size}"
    logging.info("Text files ready in %.1f s: %s", time.monotonic() - start, builder.data_dir)

    train_source = builder.as_data_source("train")
    has_valid = "validation" in builder.info.splits
    tokenizer_path = os.path.join(cfg.data_dir, "tokenizers", name + ".model")
    start = time.monotonic()
    tok = tokenizer_lib.train_tokenizer(_texts(train_source), tokenizer_path, vocab_size=cfg.vocab_size,
                                        max_chars=cfg.tokenizer_train_chars)
    logging.info("Tokenizer ready in %.1f s: %s", time.monotonic() - start, tokenizer_path)

    token_dir = os.path.join(cfg.data_dir, "tokens", f"{name}-{tok.fingerprint[:12]}")
    train_path = os.path.join(token_dir, "train.bin")
    valid_path = os.path.join(token_dir, "validation.bin")
    start = time.monotonic()
    train_tokens = token_store.tokenize_split(train_source, tok, train_path)
    if has_valid:
      valid_tokens = token_store.tokenize_split(builder.as_data_source("validation"), tok, valid_path)
    else:  # A single input file: hold out the tail of its stream instead.
      cut = len(train_tokens) - max(1, int(len(train_tokens) * cfg.validation_fraction))
      logging.warning("No validation file (one input file): holding out the last %d train tokens.",
                      len(train_tokens) - cut)
      train_tokens, valid_tokens, valid_path = train_tokens[:cut], train_tokens[cut:], train_path
    logging.info("Tokens ready in %.1f s: %d train, %d validation", time.monotonic() - start,
                 len(train_tokens), len(valid_tokens))

  metadata = builder.info.metadata
  skipped = tuple(metadata.get("skipped_invalid_utf8", [])) + tuple(metadata.get("skipped_empty", []))
  return Corpus(tokenizer=tok, train_tokens=train_tokens, valid_tokens=valid_tokens,
                tokenizer_path=tokenizer_path, train_tokens_path=train_path, valid_tokens_path=valid_path,
                dataset_dir=os.fspath(builder.data_dir), skipped_files=skipped)
