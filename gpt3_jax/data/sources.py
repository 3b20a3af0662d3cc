"""Data sources: local text files, a TFDS catalog dataset, or token files, each configured by a `SourceConfig`.

Kinds:
  'text_files': files, directories and globs of .txt/.py/.md/.jsonl/.jsonl.gz, prepared once into the local
    TFDS builder (`text_files`) under `DataConfig.data_dir` and reused until the inputs change.
  'tfds': a TFDS catalog dataset already prepared as ArrayRecord (`tfds build c4/en --data_dir=DIR
    --file_format=array_record`), read through `builder.as_data_source(split)` (random access, no
    TensorFlow). `data_dir` may be local or a bucket path TFDS can read (gs://...). Split names take TFDS
    slicing ('train[:99%]').
  'token_files': already tokenized files read in place (`token_files`: nanoGPT flat uint16, llm.c with its
    header, or our own files), with no tokenizer of their own: their ids must be below the vocabulary.

Text sources (the first two) resolve to `TextSource`: train and validation data sources of documents, a
fingerprint naming their cache entries, and their skipped-document counts. `corpus` tokenizes them once
into our token files; token-file sources are mapped directly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Optional, Sequence

from etils import epath
import tensorflow_datasets as tfds

from gpt3_jax.data import documents
from gpt3_jax.data import text_files

KINDS = ("text_files", "tfds", "token_files")


@dataclasses.dataclass(frozen=True)
class SourceConfig:
  """One data source (gin: `name/SourceConfig.field = ...`, then `DataConfig.sources = (@name/SourceConfig(),)`).

  Attributes:
    name: the source's name in metrics (`data/<name>/tokens`) and cache paths; default `source<i>`.
    kind: 'text_files', 'tfds' or 'token_files' (see the module docstring); '' infers it: 'tfds' when
      tfds_name is set, 'token_files' when train_path is, else 'text_files'.
    paths: text_files: files, directories (recursive) or globs; empty: the embedded stdlib corpus.
    extensions: text_files: extensions taken from directories and globs (None: text_files defaults, or .py
      for the stdlib corpus).
    text_field: the text's JSON field (.jsonl) or TFDS feature ('text' for c4 and wikipedia).
    max_document_bytes: text_files: a larger text file is an error, a larger JSON line is skipped and counted.
    tfds_name: tfds: catalog name with config and optional version, e.g. 'c4/en:3.1.0'.
    tfds_data_dir: tfds: where the prepared dataset lives (None: TFDS's default, ~/tensorflow_datasets).
    train_split: tfds: the training split.
    validation_split: tfds: the held-out split ('' : hold out the tail of the train stream instead).
    train_path: token_files: the train token file.
    validation_path: token_files: the validation file ('': hold out the tail of the train stream).
    token_format: token_files: 'auto', 'nanogpt' or 'llmc'.
    token_dtype: token_files: id type of nanoGPT-layout files ('uint16' or 'uint32').
    validation_fraction: the held-out fraction (of files, or of the stream's tail); None: DataConfig's.
  """
  name: str = ""
  kind: str = ""
  paths: tuple[str, ...] = ()
  extensions: Optional[tuple[str, ...]] = None
  text_field: str = "text"
  max_document_bytes: int = documents.DEFAULT_MAX_DOCUMENT_BYTES
  tfds_name: str = ""
  tfds_data_dir: Optional[str] = None
  train_split: str = "train"
  validation_split: str = "validation"
  train_path: str = ""
  validation_path: str = ""
  token_format: str = "auto"
  token_dtype: str = "uint16"
  validation_fraction: Optional[float] = None

  def resolved_kind(self) -> str:
    """The kind, inferred when empty; raises ValueError for an unknown one."""
    kind = self.kind or ("tfds" if self.tfds_name else "token_files" if self.train_path else "text_files")
    if kind not in KINDS:
      raise ValueError(f"SourceConfig {self.name!r}: unknown kind {self.kind!r}; use one of {KINDS}.")
    return kind


@dataclasses.dataclass(frozen=True)
class TextSource:
  """A text source ready to tokenize.

  Attributes:
    train: random-access documents (items are dicts holding `text_field`, as bytes or str).
    validation: the held-out documents, or None (hold out the tail of the train stream).
    text_field: the item key holding the text.
    fingerprint: names this source's token files (and, alone, the tokenizer).
    dataset_dir: the TFDS dataset directory.
    skipped: skipped documents by reason.
    skipped_files: text files skipped whole (not UTF-8, or empty).
  """
  train: Sequence[Any]
  validation: Optional[Sequence[Any]]
  text_field: str
  fingerprint: str
  dataset_dir: str
  skipped: dict[str, int]
  skipped_files: tuple[str, ...]


def text_file_inputs(cfg: SourceConfig) -> tuple[list[str], tuple[str, ...]]:
  """(paths, extensions) of a text_files source, the stdlib corpus when it has no paths."""
  if cfg.paths:
    return list(cfg.paths), tuple(cfg.extensions or text_files.DEFAULT_EXTENSIONS)
  return text_files.default_corpus_paths(), tuple(cfg.extensions or text_files.default_corpus_extensions())


def check_paths(cfg: SourceConfig) -> None:
  """Cheap checks before any preparation: input paths exist and match files, token files exist.

  Raises:
    ValueError: naming the missing path or empty glob.
  """
  kind = cfg.resolved_kind()
  if kind == "text_files":
    text_files.find_files(*text_file_inputs(cfg))
  elif kind == "token_files":
    for path in (cfg.train_path, cfg.validation_path):
      if path and not os.path.isfile(path):
        raise ValueError(f"Source {cfg.name!r}: token file {path} does not exist.")
  elif kind == "tfds" and not cfg.tfds_name:
    raise ValueError(f"Source {cfg.name!r}: kind 'tfds' needs tfds_name (e.g. 'c4/en').")


def prepare_text_source(cfg: SourceConfig, data_dir: str, validation_fraction: float) -> TextSource:
  """Prepares (or reuses) a 'text_files' source, or opens a prepared 'tfds' one.

  Raises:
    ValueError: bad paths, no usable text, or a TFDS dataset that is not prepared in tfds_data_dir.
  """
  if cfg.resolved_kind() == "text_files":
    paths, extensions = text_file_inputs(cfg)
    builder = text_files.prepare_text_files(paths, data_dir, extensions=extensions,
                                            validation_fraction=validation_fraction,
                                            text_field=cfg.text_field,
                                            max_document_bytes=cfg.max_document_bytes)
    meta = builder.info.metadata
    has_valid = "validation" in builder.info.splits
    # A read-only builder of the prepared directory: its data sources pickle (for grain workers), the
    # LocalTextFiles builder's do not (it is re-created from its constructor arguments).
    reader = tfds.builder_from_directory(os.fspath(builder.data_dir))
    return TextSource(
        train=reader.as_data_source("train"),
        validation=reader.as_data_source("validation") if has_valid else None,
        text_field="text", fingerprint=builder.builder_config.name,
        dataset_dir=os.fspath(builder.data_dir), skipped=dict(meta.get("skipped_documents", {})),
        skipped_files=tuple(meta.get("skipped_invalid_utf8", [])) + tuple(meta.get("skipped_empty", [])))
  return _open_tfds(cfg)


def _open_tfds(cfg: SourceConfig) -> TextSource:
  try:
    data_dir = cfg.tfds_data_dir and (cfg.tfds_data_dir if "://" in cfg.tfds_data_dir
                                      else os.path.expanduser(cfg.tfds_data_dir))
    builder = tfds.builder(cfg.tfds_name, data_dir=data_dir)
  except Exception as e:  # TFDS raises several types for unknown names and versions.
    raise ValueError(f"Source {cfg.name!r}: TFDS dataset {cfg.tfds_name!r} not found ({e}).") from None
  if not (epath.Path(builder.data_dir) / "dataset_info.json").exists():
    raise ValueError(
        f"Source {cfg.name!r}: TFDS dataset {cfg.tfds_name!r} is not prepared in {builder.data_dir}; run "
        f"`tfds build {cfg.tfds_name.split(':')[0]} --data_dir={cfg.tfds_data_dir or '~/tensorflow_datasets'} "
        "--file_format=array_record` first (see docs/data.md).")
  features = builder.info.features
  if cfg.text_field not in features:
    raise ValueError(f"Source {cfg.name!r}: {cfg.tfds_name} has no feature {cfg.text_field!r}; its "
                     f"features are {sorted(features.keys())}. Set SourceConfig.text_field.")
  try:
    train = builder.as_data_source(cfg.train_split)
    validation = builder.as_data_source(cfg.validation_split) if cfg.validation_split else None
  except (ValueError, KeyError, NotImplementedError) as e:
    raise ValueError(f"Source {cfg.name!r}: cannot read {cfg.tfds_name} splits {cfg.train_split!r} / "
                     f"{cfg.validation_split!r} as data sources ({e}); prepare it with "
                     "--file_format=array_record.") from None
  identity = {"name": builder.info.full_name, "data_dir": os.fspath(builder.data_dir),
              "train": cfg.train_split, "validation": cfg.validation_split, "field": cfg.text_field,
              "sizes": [len(train), len(validation) if validation is not None else 0]}
  digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
  return TextSource(train=train, validation=validation, text_field=cfg.text_field,
                    fingerprint=f"{builder.name}-{digest[:20]}", dataset_dir=os.fspath(builder.data_dir),
                    skipped={}, skipped_files=())
