"""Flat token files: a split tokenized once into the nanoGPT layout, then memory-mapped.

Layout: one flat little-endian array of token ids (uint16 when the vocabulary fits, else uint32), the
documents in data-source order, each followed by the EOT id (GPT-3 packing: documents are concatenated and
delimited, never masked from each other). A sidecar `<file>.json` records the token count, dtype,
vocabulary size and tokenizer fingerprint; `load_tokens` checks them.

Tokenization runs through a grain pipeline, `MapDataset.source(data_source).map(tokenize)`, read in order
with a thread pool (`grain.ReadOptions(num_threads=...)`) by default, or with `num_workers` grain worker
processes (`IterDataset.mp_prefetch`, same order, same output). Threads are the default: workers are spawned
processes that need parsed absl flags and a `__main__` guard, which library code called from tests or
notebooks cannot guarantee, and SentencePiece releases the GIL while encoding, so threads already use the
cores (on 2 cores, 600 stdlib files: threads 1.1M tokens/s, 2 workers 0.4M tokens/s including their
start-up). Workers pay off on many cores and large corpora, from an absl entry point
(`DataConfig.tokenize_workers`, `export_tokens --tokenize_workers`).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Sequence

from absl import logging
import grain
import numpy as np

from gpt3_jax.data import tokenizer as tokenizer_lib

_WRITE_BUFFER_TOKENS = 1 << 20


def token_dtype(vocab_size: int) -> np.dtype:
  """Little-endian uint16 when every id fits in 16 bits, else uint32."""
  return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def sidecar_path(path: str) -> str:
  """Path of the JSON metadata next to a token file."""
  return path + ".json"


def _read_sidecar(path: str) -> dict[str, Any] | None:
  try:
    with open(sidecar_path(path)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _atomic_write_json(path: str, payload: dict[str, Any]) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
  with os.fdopen(fd, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _text_of(example: Any, text_field: str = "text") -> str:
  """The text of a data-source item: a dict with `text_field`, or the text itself; bytes are UTF-8."""
  text = example[text_field] if isinstance(example, dict) else example
  if isinstance(text, np.ndarray):
    text = text.item()
  return text.decode("utf-8") if isinstance(text, bytes) else str(text)


def tokenize_split(data_source: Sequence[Any], tokenizer: tokenizer_lib.TextTokenizer, out_path: str, *,
                   num_threads: int | None = None, text_field: str = "text",
                   num_workers: int = 0) -> np.memmap:
  """Tokenizes every document of `data_source` into `out_path` (reused when already there) and maps it.

  Args:
    data_source: random-access documents (`builder.as_data_source(split)`, or any sequence of str/bytes
      or of dicts with a 'text' entry).
    tokenizer: the tokenizer; its EOT id follows every document.
    out_path: the token file; written to a temporary file first, then renamed.
    num_threads: tokenizing threads (default: the CPU count).
    text_field: the dict key holding the text (a TFDS feature name).
    num_workers: grain worker processes (0: threads only); see the module docstring.

  Returns:
    The token file, memory-mapped read-only.
  """
  dtype = token_dtype(tokenizer.vocab_size)
  meta = _read_sidecar(out_path)
  if (os.path.exists(out_path) and meta is not None
      and meta.get("tokenizer_fingerprint") == tokenizer.fingerprint):
    logging.info("Reusing token file %s (%d tokens)", out_path, meta["num_tokens"])
    return load_tokens(out_path, dtype, tokenizer=tokenizer)

  eot = np.array([tokenizer.eot_id], dtype=dtype)

  def tokenize(example: Any) -> np.ndarray:
    return np.concatenate([np.asarray(tokenizer.encode(_text_of(example, text_field)), dtype=dtype), eot])

  threads = num_threads or os.cpu_count() or 1
  dataset = grain.MapDataset.source(data_source).map(tokenize).to_iter_dataset(
      grain.ReadOptions(num_threads=threads, prefetch_buffer_size=4 * threads))
  if num_workers > 0:
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))

  directory = os.path.dirname(os.path.abspath(out_path))
  os.makedirs(directory, exist_ok=True)
  logging.info("Tokenizing %d documents into %s", len(data_source), out_path)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-tokens-")
  num_tokens, num_docs = 0, 0
  try:
    with os.fdopen(fd, "wb") as f:
      buffer, buffered = [], 0
      for ids in dataset:
        buffer.append(ids)
        buffered += len(ids)
        num_tokens += len(ids)
        num_docs += 1
        if buffered >= _WRITE_BUFFER_TOKENS:
          f.write(np.concatenate(buffer).tobytes())
          buffer, buffered = [], 0
      if buffer:
        f.write(np.concatenate(buffer).tobytes())
    _atomic_write_json(sidecar_path(out_path), {
        "num_tokens": num_tokens,
        "num_documents": num_docs,
        "dtype": dtype.str,
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "tokenizer_fingerprint": tokenizer.fingerprint,
    })
    os.replace(tmp, out_path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  logging.info("Wrote %d tokens of %d documents to %s", num_tokens, num_docs, out_path)
  return load_tokens(out_path, dtype, tokenizer=tokenizer)


def load_tokens(path: str, dtype: np.dtype | str | None = None, *,
                tokenizer: tokenizer_lib.TextTokenizer | None = None) -> np.ndarray:
  """Memory-maps a token file read-only (no copy).

  Args:
    path: the token file.
    dtype: expected dtype (default: the one in the sidecar).
    tokenizer: when given, its vocabulary size and fingerprint must match the sidecar's.

  Returns:
    A read-only np.memmap (a read-only empty array for an empty file: mmap cannot map 0 bytes).

  Raises:
    ValueError: missing sidecar, byte length not a multiple of the dtype size or not the recorded count,
      or a dtype / vocabulary / tokenizer mismatch.
  """
  meta = _read_sidecar(path)
  if meta is None:
    raise ValueError(f"Token file {path} has no readable sidecar {sidecar_path(path)}; re-tokenize it.")
  dtype = np.dtype(dtype if dtype is not None else meta["dtype"])
  if dtype != np.dtype(meta["dtype"]):
    raise ValueError(f"Token file {path} holds {meta['dtype']} ids, not {dtype.str}; re-tokenize it.")
  size = os.path.getsize(path)
  if size % dtype.itemsize:
    raise ValueError(f"Token file {path} has {size} bytes, not a multiple of {dtype.itemsize}: truncated "
                     "or wrong dtype; delete it and re-tokenize.")
  if size // dtype.itemsize != meta["num_tokens"]:
    raise ValueError(f"Token file {path} has {size // dtype.itemsize} tokens but its sidecar says "
                     f"{meta['num_tokens']}; delete it and re-tokenize.")
  if tokenizer is not None and (meta["vocab_size"] != tokenizer.vocab_size
                                or meta["tokenizer_fingerprint"] != tokenizer.fingerprint):
    raise ValueError(f"Token file {path} was made by another tokenizer (vocab {meta['vocab_size']}, "
                     f"fingerprint {meta['tokenizer_fingerprint'][:12]}); delete it and re-tokenize.")
  if size == 0:
    empty = np.zeros(0, dtype)
    empty.flags.writeable = False
    return empty
  return np.memmap(path, dtype=dtype, mode="r")
