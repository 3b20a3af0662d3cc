"""Documents of one local file: a whole text file, or one document per line of a .jsonl / .jsonl.gz file.

`read_documents(path, ...)` yields `Document`s (key, text) and `Skipped`s (key, reason): nothing is dropped
without a record. Reasons: 'invalid_utf8', 'empty' (no non-whitespace character), 'invalid_json',
'no_text_field' (the line is not an object whose `text_field` is a string), 'too_large' (a JSON line longer
than `max_document_bytes`).

A plain text file is one document; one larger than `max_document_bytes` is an error naming the file (it
would be read into memory whole): split it, or raise the limit.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
from typing import Iterator, Union

JSONL_EXTENSIONS = (".jsonl", ".jsonl.gz")
DEFAULT_MAX_DOCUMENT_BYTES = 64 << 20
SKIP_REASONS = ("invalid_utf8", "empty", "invalid_json", "no_text_field", "too_large")


@dataclasses.dataclass(frozen=True)
class Document:
  key: str
  text: str


@dataclasses.dataclass(frozen=True)
class Skipped:
  key: str
  reason: str


def is_jsonl(path: str) -> bool:
  return path.endswith(JSONL_EXTENSIONS)


def check_size(path: str, size: int, max_document_bytes: int) -> None:
  """Raises ValueError naming `path` when a plain text file exceeds max_document_bytes."""
  if not is_jsonl(path) and size > max_document_bytes:
    raise ValueError(f"Text file {path} is {size} bytes, over max_document_bytes={max_document_bytes}: one "
                     "file is one document and is read whole. Split it (or use .jsonl, one document per "
                     "line), or raise the limit.")


def _decode(data: bytes, key: str) -> Union[Document, Skipped]:
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError:
    return Skipped(key, "invalid_utf8")
  return Document(key, text) if text.strip() else Skipped(key, "empty")


def _jsonl_documents(path: str, text_field: str, max_document_bytes: int) -> Iterator[Union[Document, Skipped]]:
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    for number, line in enumerate(f, start=1):
      key = f"{path}:{number}"
      if not line.strip():
        continue  # Blank lines separate nothing in JSON Lines; not a document.
      if len(line) > max_document_bytes:
        yield Skipped(key, "too_large")
        continue
      try:
        record = json.loads(line.decode("utf-8"))
      except UnicodeDecodeError:
        yield Skipped(key, "invalid_utf8")
        continue
      except ValueError:
        yield Skipped(key, "invalid_json")
        continue
      text = record.get(text_field) if isinstance(record, dict) else None
      if not isinstance(text, str):
        yield Skipped(key, "no_text_field")
      elif not text.strip():
        yield Skipped(key, "empty")
      else:
        yield Document(key, text)


def read_documents(path: str, *, text_field: str = "text",
                   max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES) -> Iterator[Union[Document, Skipped]]:
  """The documents of `path` (see the module docstring), in file order."""
  if is_jsonl(path):
    yield from _jsonl_documents(path, text_field, max_document_bytes)
    return
  check_size(path, os.path.getsize(path), max_document_bytes)
  with open(path, "rb") as f:
    yield _decode(f.read(), path)
