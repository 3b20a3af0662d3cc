"""A lossless SentencePiece BPE tokenizer for code and text.

The model is trained so that `decode(encode(s)) == s` for any string without U+2581 ('▁', which
SentencePiece uses to stand for a space and decodes back to one): identity normalization, no dummy prefix,
no whitespace folding, byte fallback for characters outside the vocabulary, and '\\n' as a piece of its own
(otherwise SentencePiece never learns it and spends a byte token on each newline).

Special pieces: id 0 is <unk> (unused thanks to byte fallback) and `<|endoftext|>` is a control symbol: the
document delimiter of the packed token stream. Text containing the literal string '<|endoftext|>' is
encoded as ordinary pieces, so documents cannot forge a delimiter; `decode` renders the EOT id as the
literal string.

CLI (trains on a weighted sample of the configured sources; flags override the gin DataConfig):
  python -m gpt3_jax.data.tokenizer --gin_file=gin_configs/data/gpt3_mixture.gin --vocab_size=50304
  python -m gpt3_jax.data.tokenizer --paths=DIR --model_path=/tmp/t.model --vocab_size=8192
"""

from __future__ import annotations

import hashlib
import itertools
import os
import tempfile
from typing import Iterable, Iterator, Protocol, Sequence

from absl import logging
import sentencepiece as spm

EOT_PIECE = "<|endoftext|>"
NEWLINE_PIECE = "\n"
ENCODE_CHUNK_CHARS = 64 * 1024  # Encoding one huge string is ~4.5x slower than ~64K pieces.
TRAIN_CHUNK_BYTES = 2048  # Below SentencePiece's max_sentence_length (4192 bytes).


class TextTokenizer(Protocol):
  """What the data pipeline, training, sampling and scoring need of a tokenizer. Two implementations: `Tokenizer`
  (our SentencePiece BPE) and `hf_tokenizer.HFTokenizer` (a Hugging Face tokenizer directory)."""

  vocab_size: int
  eot_id: int
  fingerprint: str

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...


def load_tokenizer(path: str) -> TextTokenizer:
  """A SentencePiece model file, or a Hugging Face tokenizer directory (tokenizer.json, or vocab.json +
  merges.txt)."""
  if os.path.isdir(path):
    from gpt3_jax.data.hf_tokenizer import HFTokenizer  # pylint: disable=g-import-not-at-top
    return HFTokenizer.load(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"tokenizer {path!r} does not exist; pass a SentencePiece .model file or a Hugging "
                            f"Face tokenizer directory")
  return Tokenizer.load(path)


class Tokenizer:
  """Encodes text to token ids and back with a SentencePiece model."""

  def __init__(self, model_proto: bytes):
    """Builds the tokenizer from a serialized SentencePiece ModelProto."""
    self._proto = model_proto
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self._eot_id = self._sp.piece_to_id(EOT_PIECE)
    if self._sp.id_to_piece(self._eot_id) != EOT_PIECE:
      raise ValueError(f"SentencePiece model has no {EOT_PIECE} piece; train it with train_tokenizer.")

  @classmethod
  def load(cls, path: str) -> Tokenizer:
    """Loads a model file written by `train_tokenizer`."""
    with open(path, "rb") as f:
      return cls(f.read())

  @property
  def vocab_size(self) -> int:
    """Number of ids (all special pieces and bytes included)."""
    return self._sp.get_piece_size()

  @property
  def eot_id(self) -> int:
    """Id of the end-of-text delimiter."""
    return self._eot_id

  @property
  def fingerprint(self) -> str:
    """SHA-256 of the serialized model: identifies the exact vocabulary and merges."""
    return hashlib.sha256(self._proto).hexdigest()

  def encode(self, text: str) -> list[int]:
    """Encodes `text` (no EOT appended), in chunks split after newlines."""
    chunks = list(_chunks(text, ENCODE_CHUNK_CHARS))
    if not chunks:
      return []
    encoded = self._sp.encode(chunks, out_type=int)
    return list(itertools.chain.from_iterable(encoded))

  def decode(self, ids: Sequence[int]) -> str:
    """Decodes ids; each EOT id becomes the literal string '<|endoftext|>'."""
    ids = [int(i) for i in ids]
    parts, start = [], 0
    for pos, i in enumerate(ids):
      if i == self._eot_id:
        parts.append(self._sp.decode(ids[start:pos]))
        parts.append(EOT_PIECE)
        start = pos + 1
    parts.append(self._sp.decode(ids[start:]))
    return "".join(parts)


def _chunks(text: str, size: int) -> Iterator[str]:
  """Splits `text` into pieces of about `size` characters, cutting just after a newline when possible.

  Newline is a piece of its own, so cutting after it does not change the encoding.
  """
  start = 0
  while start < len(text):
    end = start + size
    if end < len(text):
      newline = text.rfind("\n", start, end)
      if newline >= start:
        end = newline + 1
    yield text[start:end]
    start = end


def _training_sentences(texts: Iterable[str], max_chars: int | None) -> Iterator[str]:
  """Lines of `texts` (newlines dropped; '\\n' is a user symbol), cut below max_sentence_length."""
  total = 0
  for text in texts:
    for line in text.split("\n"):
      while line:
        piece = line[:TRAIN_CHUNK_BYTES // 4] if len(line.encode()) > TRAIN_CHUNK_BYTES else line
        line = line[len(piece):]
        total += len(piece) + 1
        yield piece
      if max_chars is not None and total >= max_chars:
        return


def train_tokenizer(texts: Iterable[str], model_path: str, *, vocab_size: int,
                    character_coverage: float = 1.0, max_chars: int | None = 20_000_000,
                    num_threads: int | None = None, byte_fallback: bool = True,
                    special_tokens: Sequence[str] = (), split_digits: bool = False) -> Tokenizer:
  """Trains a BPE model on `texts` and writes it atomically to `model_path`; reuses an existing one.

  Args:
    texts: training documents, in a deterministic order. Only the first `max_chars` characters are used
      (pass a deterministic sample of a larger corpus).
    model_path: where the model goes; if it exists it is loaded and nothing is trained.
    vocab_size: total number of ids, including 256 byte pieces and the special pieces.
    character_coverage: fraction of characters that get their own piece (the rest use byte fallback).
    max_chars: cap on training characters (None: no cap). ~20M characters train in seconds.
    num_threads: training threads (default: all CPUs).
    byte_fallback: spell characters outside the vocabulary as UTF-8 byte pieces (lossless). Without it
      they become <unk> and `decode(encode(s)) == s` no longer holds.
    special_tokens: extra pieces kept whole and never split or merged (e.g. '<|fim_prefix|>'); unlike
      EOT, text containing them encodes to their ids.
    split_digits: split numbers into single digits (as LLaMA does); off by default like GPT-2/3.

  Returns:
    The tokenizer.
  """
  if os.path.exists(model_path):
    logging.info("Reusing tokenizer %s", model_path)
    return Tokenizer.load(model_path)
  directory = os.path.dirname(os.path.abspath(model_path))
  os.makedirs(directory, exist_ok=True)
  logging.info("Training a %d-piece BPE tokenizer into %s", vocab_size, model_path)
  with tempfile.TemporaryDirectory(dir=directory, prefix=".tokenizer-") as tmp:
    prefix = os.path.join(tmp, "spm")
    spm.SentencePieceTrainer.train(
        sentence_iterator=_training_sentences(texts, max_chars),
        model_prefix=prefix,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=character_coverage,
        byte_fallback=byte_fallback,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        split_digits=split_digits,
        user_defined_symbols=[NEWLINE_PIECE, *special_tokens],
        control_symbols=[EOT_PIECE],
        unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
        max_sentence_length=TRAIN_CHUNK_BYTES * 2,
        hard_vocab_limit=True,
        num_threads=num_threads or os.cpu_count() or 1,
        minloglevel=2,
    )
    os.replace(prefix + ".model", model_path)
  return Tokenizer.load(model_path)


def _main(argv: Sequence[str]) -> None:
  del argv
  import dataclasses  # pylint: disable=g-import-not-at-top
  from gpt3_jax.data import corpus  # pylint: disable=g-import-not-at-top
  if FLAGS.gin_file or FLAGS.gin:
    from gpt3_jax import configs  # pylint: disable=g-import-not-at-top
    cfg = configs.parse_and_build(FLAGS.gin_file, FLAGS.gin).data
  else:
    cfg = corpus.DataConfig()
  overrides = {"paths": tuple(FLAGS.paths), "extensions": tuple(FLAGS.extensions) or None,
               "vocab_size": FLAGS.vocab_size, "character_coverage": FLAGS.character_coverage,
               "byte_fallback": FLAGS.byte_fallback, "special_tokens": tuple(FLAGS.special_tokens),
               "split_digits": FLAGS.split_digits, "tokenizer_train_chars": FLAGS.train_chars,
               "data_dir": FLAGS.data_dir}
  cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items()
                                    if FLAGS[{"tokenizer_train_chars": "train_chars"}.get(k, k)].present})
  tok, path = corpus.train_corpus_tokenizer(cfg, FLAGS.model_path)
  logging.info("Tokenizer %s: vocab %d, eot %d", path, tok.vocab_size, tok.eot_id)
  print(path)


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_multi_string("gin_file", [], "gin files whose DataConfig names the sources to sample.")
  flags.DEFINE_multi_string("gin", [], "Extra gin bindings.")
  flags.DEFINE_list("paths", [], "Files, directories or globs (a single text_files source; default: gin, "
                    "else the stdlib corpus).")
  flags.DEFINE_list("extensions", [], "File extensions to include.")
  flags.DEFINE_string("model_path", None, "Where to write the model (default: under the data_dir cache).")
  flags.DEFINE_string("data_dir", None, "Cache directory for prepared text.")
  flags.DEFINE_integer("vocab_size", 8192, "Vocabulary size, all special and byte pieces included.")
  flags.DEFINE_float("character_coverage", 1.0, "Fraction of characters with a piece of their own.")
  flags.DEFINE_bool("byte_fallback", True, "Spell unknown characters as UTF-8 bytes (lossless).")
  flags.DEFINE_list("special_tokens", [], "Extra special pieces, e.g. <|fim_prefix|>,<|fim_suffix|>.")
  flags.DEFINE_bool("split_digits", False, "Split numbers into digits.")
  flags.DEFINE_integer("train_chars", 20_000_000, "Characters sampled (split over sources by weight).")
  FLAGS = flags.FLAGS
  from gpt3_jax import errors  # pylint: disable=g-import-not-at-top
  app.run(errors.one_line_errors(_main))
