"""Local text files as a TFDS dataset (ArrayRecord, read through data sources, no TensorFlow).

`prepare_text_files(paths, data_dir)` finds the files (directories are searched recursively, globs are
expanded), fingerprints them (paths, sizes, mtimes, options) and prepares a TFDS dataset named
`local_text_files` whose config name is that fingerprint: the same inputs are prepared once and reused
from `data_dir`; changed inputs get a new config and are prepared again.

Each example is one document: {'text': the UTF-8 text, 'path': its file}: a whole text file, or one line of
a .jsonl / .jsonl.gz file (its `text_field`; see `documents`). Text files that are not valid UTF-8, and files
with no non-whitespace character, are skipped; they are logged by name and listed in the dataset's metadata
(`builder.info.metadata['skipped_invalid_utf8']`, `['skipped_empty']`). Every skipped document (files and
JSON lines) is counted by reason in `metadata['skipped_documents']`, the first few named in
`['skipped_examples']`. A text file over `max_document_bytes` is an error naming it.

The train/validation split is by file: the SHA-256 of a file's key (its path relative to the parent of the
directory it was found in, or to the fixed prefix of its glob) maps to a fraction in [0, 1); the file is a
validation file when that fraction is below `validation_fraction`. With two or more files at least one is
in each split; with a single file there is no 'validation' split (TFDS cannot store an empty split).

Read the splits with `builder.as_data_source('train')` / `('validation')` (random access, items are dicts
with bytes values).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import sysconfig
from typing import Iterator, Optional, Sequence, Union

from absl import logging
import tensorflow_datasets as tfds

from gpt3_jax.data import documents

DEFAULT_EXTENSIONS = (".txt", ".py", ".md", ".jsonl", ".jsonl.gz")
DATASET_NAME = "local_text_files"
# 2: examples keyed by their relative key, so the order does not depend on where the corpus is. Bump when the
# generated examples change for the same inputs.
_FORMAT_VERSION = 2
_MAX_LOGGED_NAMES = 20
_PRUNED_DIRS = ("site-packages", "dist-packages", "__pycache__")

PathsArg = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]


@dataclasses.dataclass(frozen=True)
class SourceFile:
  """One input file.

  Attributes:
    path: absolute path.
    key: path relative to the input's base directory; decides the split.
    size: size in bytes when found.
    mtime_ns: modification time when found.
  """
  path: str
  key: str
  size: int
  mtime_ns: int


def default_corpus_paths() -> list[str]:
  """The embedded default corpus: the running interpreter's standard-library directory.

  Walking it (see `find_files`) skips site-packages, dist-packages, virtual environments and caches; use it
  with `default_corpus_extensions()` (.py only).
  """
  return [sysconfig.get_paths()["stdlib"]]


def default_corpus_extensions() -> tuple[str, ...]:
  """File extensions of the default corpus."""
  return (".py",)


def _is_pruned_dir(dirpath: str, name: str) -> bool:
  """Directories never searched: hidden ones, package installs, caches and virtual environments."""
  if name.startswith(".") or name in _PRUNED_DIRS:
    return True
  return os.path.exists(os.path.join(dirpath, name, "pyvenv.cfg"))


def _walk(root: str, extensions: tuple[str, ...]) -> Iterator[str]:
  """Yields files under `root` with one of `extensions`, in a deterministic order."""
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if not _is_pruned_dir(dirpath, d))
    for name in sorted(filenames):
      if name.endswith(extensions):
        yield os.path.join(dirpath, name)


def _glob_base(pattern: str) -> str:
  """The longest leading part of `pattern` without glob magic: the base of the matches' keys."""
  parts = pattern.split(os.sep)
  fixed = []
  for part in parts:
    if glob.has_magic(part):
      break
    fixed.append(part)
  return os.sep.join(fixed) or os.curdir


def _as_list(paths: PathsArg) -> list[str]:
  if isinstance(paths, (str, os.PathLike)):
    return [os.fspath(paths)]
  return [os.fspath(p) for p in paths]


def find_files(paths: PathsArg,
               extensions: Optional[Sequence[str]] = DEFAULT_EXTENSIONS) -> list[SourceFile]:
  """Expands directories (recursively, by extension), globs and plain files into a sorted file list.

  A plain file is taken whatever its extension; glob matches and directory contents are filtered by
  `extensions` (None: DEFAULT_EXTENSIONS).

  Raises:
    ValueError: a path does not exist, or matches no file.
  """
  extensions = DEFAULT_EXTENSIONS if extensions is None else tuple(extensions)
  path_list = _as_list(paths)
  if not path_list:
    raise ValueError("No input paths given: pass files, directories or globs.")
  found: dict[str, str] = {}  # absolute path -> key
  for raw in path_list:
    path = os.path.abspath(os.path.expanduser(raw))
    if glob.has_magic(raw):
      base = os.path.abspath(_glob_base(os.path.expanduser(raw)))
      matches = []
      for match in sorted(glob.glob(path, recursive=True)):
        if os.path.isdir(match):
          matches.extend(_walk(match, extensions))
        elif match.endswith(extensions):
          matches.append(match)
    elif os.path.isdir(path):
      base = os.path.dirname(path.rstrip(os.sep)) or os.sep
      matches = list(_walk(path, extensions))
    elif os.path.isfile(path):
      base = os.path.dirname(path)
      matches = [path]
    else:
      raise ValueError(f"Input path {raw!r} does not exist; pass an existing file, directory or glob.")
    if not matches:
      raise ValueError(
          f"Input path {raw!r} matches no files with extensions {extensions}; check the path or pass "
          "other extensions.")
    for match in matches:
      found.setdefault(os.path.abspath(match), os.path.relpath(match, base))
  files = []
  for path in sorted(found):
    stat = os.stat(path)
    files.append(SourceFile(path=path, key=found[path], size=stat.st_size, mtime_ns=stat.st_mtime_ns))
  return files


def fingerprint(files: Sequence[SourceFile], extensions: Sequence[str], validation_fraction: float,
                text_field: str = "text",
                max_document_bytes: int = documents.DEFAULT_MAX_DOCUMENT_BYTES) -> str:
  """A hex digest identifying the inputs (paths, keys, sizes, mtimes) and the options."""
  payload = {
      "format": _FORMAT_VERSION,
      "extensions": list(extensions),
      "validation_fraction": validation_fraction,
      "text_field": text_field,
      "max_document_bytes": max_document_bytes,
      "files": [[f.path, f.key, f.size, f.mtime_ns] for f in files],
  }
  return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def split_fraction(key: str) -> float:
  """Maps a file key to a deterministic fraction in [0, 1)."""
  digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def split_files(files: Sequence[SourceFile],
                validation_fraction: float) -> tuple[list[SourceFile], list[SourceFile]]:
  """Splits files into (train, validation) by the hash of their keys.

  With two or more files each split gets at least one: the lowest-hash file moves to validation, or the
  highest-hash one to train.
  """
  ordered = sorted(files, key=lambda f: (split_fraction(f.key), f.path))
  valid = [f for f in ordered if split_fraction(f.key) < validation_fraction]
  train = [f for f in ordered if split_fraction(f.key) >= validation_fraction]
  if len(ordered) >= 2:
    if not valid:
      valid, train = train[:1], train[1:]
    elif not train:
      valid, train = valid[:-1], valid[-1:]
  return sorted(train, key=lambda f: f.path), sorted(valid, key=lambda f: f.path)


def _status(f: SourceFile, max_document_bytes: int) -> str:
  """'ok', 'invalid_utf8' or 'empty' for a text file; always 'ok' for JSON Lines (judged per line)."""
  if documents.is_jsonl(f.path):
    return "ok"
  doc = next(documents.read_documents(f.path, max_document_bytes=max_document_bytes))
  return "ok" if isinstance(doc, documents.Document) else doc.reason


class LocalTextFiles(tfds.core.GeneratorBasedBuilder):
  """Local text files, one example per file; see the module docstring."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Local text files, split by file-path hash."}
  # No code-relative resources (checksums, metadata). TFDS's lookup of them imports `importlib_resources`,
  # which this environment lacks, for builders defined inside a package.
  code_path = None

  def __init__(self, *, files: Sequence[SourceFile], validation_fraction: float = 0.02,
               extensions: Sequence[str] = DEFAULT_EXTENSIONS, text_field: str = "text",
               max_document_bytes: int = documents.DEFAULT_MAX_DOCUMENT_BYTES, **kwargs):
    """Creates the builder.

    Args:
      files: the input files (from `find_files`).
      validation_fraction: expected fraction of files in the validation split.
      extensions: the extensions used to find `files` (part of the fingerprint).
      text_field: the JSON field holding the text of .jsonl / .jsonl.gz lines.
      max_document_bytes: a larger text file is an error, a larger JSON line is skipped and counted.
      **kwargs: passed to `tfds.core.GeneratorBasedBuilder` (data_dir, file_format). `config` defaults to
        one named after the inputs' fingerprint.
    """
    self._files = list(files)
    self._validation_fraction = validation_fraction
    self._text_field = text_field
    self._max_document_bytes = max_document_bytes
    self._skipped: dict[str, int] = {}
    self._skipped_examples: list[str] = []
    if "config" not in kwargs:
      digest = fingerprint(self._files, extensions, validation_fraction, text_field, max_document_bytes)
      kwargs["config"] = tfds.core.BuilderConfig(
          name=f"fp{digest[:20]}", version=self.VERSION,
          description=f"{len(self._files)} files, validation_fraction={validation_fraction}")
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Local text files, one example per file.",
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "path": tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    for f in self._files:
      documents.check_size(f.path, f.size, self._max_document_bytes)
    usable, invalid, empty = [], [], []
    for f in self._files:
      {"ok": usable, "invalid_utf8": invalid, "empty": empty}[_status(f, self._max_document_bytes)].append(f)
    for kind, skipped in (("not valid UTF-8", invalid), ("empty", empty)):
      if skipped:
        names = ", ".join(f.path for f in skipped[:_MAX_LOGGED_NAMES])
        more = f" and {len(skipped) - _MAX_LOGGED_NAMES} more" if len(skipped) > _MAX_LOGGED_NAMES else ""
        logging.warning("Skipped %d files that are %s: %s%s", len(skipped), kind, names, more)
    if not usable:
      raise ValueError(f"All {len(self._files)} input files are empty or not UTF-8; pass text files.")
    train, valid = split_files(usable, self._validation_fraction)
    for f in invalid + empty:
      self._skip(documents.Skipped(f.path, "invalid_utf8" if f in invalid else "empty"))
    self.info.metadata.update({
        "skipped_invalid_utf8": [f.path for f in invalid],
        "skipped_empty": [f.path for f in empty],
        "skipped_documents": self._skipped,
        "skipped_examples": self._skipped_examples,
        "num_train_files": len(train),
        "num_validation_files": len(valid),
    })
    logging.info("Preparing %d train and %d validation files.", len(train), len(valid))
    splits = {"train": train, "validation": valid}
    return {name: self._generate_examples(f) for name, f in splits.items() if f}  # TFDS: no empty split.

  def _skip(self, skipped: documents.Skipped) -> None:
    """Counts a skipped document in the metadata (updated in place, written after generation)."""
    self._skipped[skipped.reason] = self._skipped.get(skipped.reason, 0) + 1
    if len(self._skipped_examples) < _MAX_LOGGED_NAMES:
      self._skipped_examples.append(f"{skipped.key} ({skipped.reason})")

  def _generate_examples(self, files: Sequence[SourceFile]):
    for f in files:
      for doc in documents.read_documents(f.path, text_field=self._text_field,
                                          max_document_bytes=self._max_document_bytes):
        if isinstance(doc, documents.Skipped):
          if not documents.is_jsonl(f.path):  # Changed since the scan: never emit bad text.
            logging.warning("Skipped %s: %s while preparing.", f.path, doc.reason)
          self._skip(doc)
          continue
        # TFDS orders examples by a hash of their key: keyed by the file's relative key (not its absolute path),
        # the document order, and so the token stream, is the same wherever the corpus is.
        yield f.key + doc.key[len(f.path):], {"text": doc.text, "path": f.path}


def prepare_text_files(paths: PathsArg, data_dir: str, *,
                       extensions: Optional[Sequence[str]] = DEFAULT_EXTENSIONS,
                       validation_fraction: float = 0.02, text_field: str = "text",
                       max_document_bytes: int = documents.DEFAULT_MAX_DOCUMENT_BYTES) -> LocalTextFiles:
  """Finds the files, prepares (or reuses) the TFDS dataset in `data_dir` and returns its builder.

  Raises:
    ValueError: a path does not exist or matches no files, a text file exceeds max_document_bytes, or no
      file is usable text.
  """
  extensions = DEFAULT_EXTENSIONS if extensions is None else tuple(extensions)
  files = find_files(paths, extensions)
  for f in files:  # Before TFDS starts a preparation it would abandon.
    documents.check_size(f.path, f.size, max_document_bytes)
  builder = LocalTextFiles(files=files, validation_fraction=validation_fraction, extensions=extensions,
                           text_field=text_field, max_document_bytes=max_document_bytes, data_dir=data_dir)
  if os.path.exists(os.path.join(os.fspath(builder.data_dir), "dataset_info.json")):
    logging.info("Reusing prepared text files at %s", builder.data_dir)
  else:
    logging.info("Preparing %d text files into %s", len(files), builder.data_dir)
    builder.download_and_prepare(download_dir=os.path.join(data_dir, "downloads"))
  return builder
