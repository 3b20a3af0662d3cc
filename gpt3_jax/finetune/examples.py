"""Reading fine-tuning examples: JSONL files or a prepared TFDS dataset, as (prompt, completion) pairs or
(text, label) pairs, with bad examples a one-line error naming where they are, or a counted skip."""

from __future__ import annotations

import collections
import json
import os
from typing import Iterator, List, Sequence, Tuple

from gpt3_jax.finetune.config import FinetuneConfig

Example = Tuple[str, str, str]  # (prompt, completion, where) or (text, label, where)


def messages_to_pair(messages: Sequence[dict]) -> Tuple[str, str]:
  """A chat as (prompt, completion) with a plain template: one 'Role: content' line per message; the last message
  is the completion, after its 'Role:' (and a space)."""
  lines = [f"{str(m['role']).capitalize()}: {m['content']}\n" for m in messages[:-1]]
  return "".join(lines) + f"{str(messages[-1]['role']).capitalize()}:", " " + str(messages[-1]["content"])


def bad(cfg: FinetuneConfig, skipped: collections.Counter, reason: str, message: str) -> None:
  """A bad example: raises the one-line error, or counts it under `reason` with on_bad_example = 'skip'."""
  if cfg.on_bad_example == "error":
    raise ValueError(f"{message} (or set FinetuneConfig.on_bad_example = 'skip' to count and skip such examples)")
  skipped[reason] += 1


def _fields(cfg: FinetuneConfig) -> Tuple[str, str]:
  return (cfg.text_field, cfg.label_field) if cfg.task == "classify" else (cfg.prompt_field, cfg.completion_field)


def jsonl_records(path: str, cfg: FinetuneConfig) -> Iterator[Tuple[str, object]]:
  """('path:line', the line's JSON value) of each non-empty line."""
  if not os.path.isfile(path):
    a, b = _fields(cfg)
    raise FileNotFoundError(f"FinetuneConfig: {path!r} does not exist; pass a JSONL file of {{{a!r}, {b!r}}} lines")
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        yield f"{path}:{number}", json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{number}: not JSON ({e.msg}); each line is one JSON object") from None


def tfds_splits(cfg: FinetuneConfig):
  """(train, validation or None) random-access sources of the prepared TFDS dataset `cfg.tfds_name`."""
  from gpt3_jax.data import sources
  source = sources.prepare_text_source(sources.SourceConfig(
      name="finetune", kind="tfds", tfds_name=cfg.tfds_name, tfds_data_dir=cfg.tfds_data_dir or None,
      train_split=cfg.train_split, validation_split=cfg.validation_split, text_field=_fields(cfg)[0]),
      data_dir="", validation_fraction=0.0)
  return source.train, source.validation


def tfds_records(cfg: FinetuneConfig, split: str, source) -> Iterator[Tuple[str, object]]:
  """('name[split] #i', the record with bytes decoded) of each record."""
  for i in range(len(source)):
    record = {k: v.decode("utf-8") if isinstance(v, bytes) else v for k, v in source[i].items()}
    yield f"{cfg.tfds_name}[{split}] #{i}", record


def parse(records, cfg: FinetuneConfig, skipped: collections.Counter) -> List[Example]:
  """The good examples of `records`."""
  out = []
  a, b = _fields(cfg)
  for where, row in records:
    if cfg.task == "generate" and isinstance(row, dict) and isinstance(row.get(cfg.messages_field), list) \
        and row[cfg.messages_field]:
      pair = messages_to_pair(row[cfg.messages_field])
    elif isinstance(row, dict) and a in row and b in row:
      pair = (str(row[a]), str(row[b]).strip() if cfg.task == "classify" else str(row[b]))
    else:
      chat = f" (nor a {cfg.messages_field!r} list)" if cfg.task == "generate" else ""
      names = "text_field / label_field" if cfg.task == "classify" else "prompt_field / completion_field"
      bad(cfg, skipped, "missing_field", f"{where}: no {a!r} and {b!r} fields{chat}; set FinetuneConfig.{names}")
      continue
    parts = (("text", pair[0]), ("label", pair[1])) if cfg.task == "classify" else (("completion", pair[1]),)
    empty = next((part for part, value in parts if not value.strip()), None)
    if empty:
      bad(cfg, skipped, f"empty_{empty}", f"{where}: the {empty} is empty")
      continue
    out.append((pair[0], pair[1], where))
  return out


def read_examples(path: str, cfg: FinetuneConfig, skipped: collections.Counter) -> List[Example]:
  """The good examples of a JSONL file."""
  return parse(jsonl_records(path, cfg), cfg, skipped)
