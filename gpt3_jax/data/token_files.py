"""Token files made elsewhere, read in place: the nanoGPT and llm.c layouts, plus writers for both.

nanoGPT: a flat array of little-endian uint16 token ids with no header (`train.bin`, `val.bin`); our own
token files (see `token_store`) are this layout too, with a JSON sidecar (and uint32 ids when the vocabulary
exceeds 65536).

llm.c: a header of 256 little-endian int32 (`[0]` the magic 20240520, `[1]` the version, `[2]` the token
count), then the tokens: uint16 for version 1, uint32 for version 2.

`open_token_file` memory-maps either layout read-only (no copy) after checking that the byte length fits the
dtype and header, and, given a vocabulary size, that every id is below it (one chunked pass over the file).
Every error names the file.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

LLMC_MAGIC = 20240520
LLMC_HEADER_INTS = 256
LLMC_HEADER_BYTES = LLMC_HEADER_INTS * 4
LLMC_DTYPES = {1: np.dtype("<u2"), 2: np.dtype("<u4")}
FORMATS = ("auto", "nanogpt", "llmc")
_CHECK_CHUNK = 1 << 24  # Tokens per chunk of the id check.


def _read_header(path: str) -> np.ndarray | None:
  """The llm.c header of `path`, or None when the file does not start with the llm.c magic."""
  with open(path, "rb") as f:
    head = f.read(LLMC_HEADER_BYTES)
  if len(head) < LLMC_HEADER_BYTES:
    return None
  header = np.frombuffer(head, dtype="<i4")
  return header if header[0] == LLMC_MAGIC else None


def detect_format(path: str) -> str:
  """'llmc' when the file starts with the llm.c magic, else 'nanogpt'."""
  return "llmc" if _read_header(path) is not None else "nanogpt"


def check_token_ids(tokens: np.ndarray, vocab_size: int, path: str) -> None:
  """Raises ValueError naming `path` when an id is >= vocab_size (reads the file once, in chunks)."""
  for start in range(0, len(tokens), _CHECK_CHUNK):
    chunk = np.asarray(tokens[start:start + _CHECK_CHUNK])
    if len(chunk) and int(chunk.max()) >= vocab_size:
      bad = start + int(np.argmax(chunk >= vocab_size))
      raise ValueError(f"Token file {path} holds id {int(tokens[bad])} at position {bad}, not below the "
                       f"vocabulary size {vocab_size}; set DataConfig.vocab_size above every id (e.g. 50257 for "
                       f"GPT-2 ids) or use the tokenizer that made the file")


def open_token_file(path: str, *, token_format: str = "auto", dtype: str = "uint16",
                    vocab_size: int | None = None) -> np.ndarray:
  """Memory-maps a nanoGPT or llm.c token file read-only.

  Args:
    path: the file.
    token_format: 'nanogpt', 'llmc', or 'auto' (llm.c when the file starts with its magic).
    dtype: the nanoGPT id type ('uint16' or 'uint32'); llm.c files carry theirs in the header.
    vocab_size: when given, every id must be below it.

  Returns:
    A read-only array of the tokens (a memmap; an empty read-only array for an empty file).

  Raises:
    ValueError: missing file, unknown format, bad llm.c header, a byte length that is not a multiple of
      the dtype (or not the header's count), or an id >= vocab_size. The message names the file.
  """
  if token_format not in FORMATS:
    raise ValueError(f"Unknown token_format {token_format!r} for {path}; use one of {FORMATS}.")
  if not os.path.isfile(path):
    raise ValueError(f"Token file {path} does not exist.")
  size = os.path.getsize(path)
  header = _read_header(path)
  if token_format == "auto":
    token_format = "llmc" if header is not None else "nanogpt"
  if token_format == "llmc":
    if header is None:
      raise ValueError(f"Token file {path} has no llm.c header (magic {LLMC_MAGIC}); is it nanoGPT layout?")
    version, count = int(header[1]), int(header[2])
    if version not in LLMC_DTYPES:
      raise ValueError(f"Token file {path} has llm.c version {version}; supported: {sorted(LLMC_DTYPES)}.")
    np_dtype, offset = LLMC_DTYPES[version], LLMC_HEADER_BYTES
    if size != offset + count * np_dtype.itemsize:
      raise ValueError(f"Token file {path} has {size} bytes but its llm.c header says {count} tokens "
                       f"({offset + count * np_dtype.itemsize} bytes): truncated or corrupt.")
  else:
    np_dtype, offset = np.dtype(dtype).newbyteorder("<"), 0
    if size % np_dtype.itemsize:
      raise ValueError(f"Token file {path} has {size} bytes, not a multiple of {np_dtype.itemsize} "
                       f"({np_dtype.name}): truncated, or another dtype or layout.")
  if size == offset:
    tokens = np.zeros(0, np_dtype)
    tokens.flags.writeable = False
  else:
    tokens = np.memmap(path, dtype=np_dtype, mode="r", offset=offset)
  if vocab_size is not None:
    check_token_ids(tokens, vocab_size, path)
  return tokens


def _atomic_write(path: str, parts) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-export-")
  try:
    with os.fdopen(fd, "wb") as f:
      for part in parts:
        f.write(part)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _chunks(tokens: np.ndarray, dtype: np.dtype):
  for start in range(0, len(tokens), _CHECK_CHUNK):
    yield np.asarray(tokens[start:start + _CHECK_CHUNK]).astype(dtype).tobytes()


def write_token_file(tokens: np.ndarray, path: str, *, token_format: str = "nanogpt") -> None:
  """Writes `tokens` atomically in the nanoGPT layout (flat, no header) or the llm.c layout.

  uint16 when every id fits (llm.c version 1), else uint32 (llm.c version 2; nanoGPT readers must then be
  told dtype uint32).
  """
  if token_format not in ("nanogpt", "llmc"):
    raise ValueError(f"Unknown token_format {token_format!r}; use 'nanogpt' or 'llmc'.")
  wide = tokens.dtype.itemsize > 2 and any(
      int(np.max(tokens[i:i + _CHECK_CHUNK])) >= 1 << 16 for i in range(0, len(tokens), _CHECK_CHUNK))
  dtype = np.dtype("<u4") if wide else np.dtype("<u2")
  parts = _chunks(tokens, dtype)
  if token_format == "llmc":
    header = np.zeros(LLMC_HEADER_INTS, "<i4")
    header[:3] = (LLMC_MAGIC, 2 if wide else 1, len(tokens))
    parts = [header.tobytes(), *parts]
  _atomic_write(path, parts)
