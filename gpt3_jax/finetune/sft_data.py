"""Supervised fine-tuning data: prompt / completion examples as rows the pretraining machinery trains on.

Each example becomes one row of `seq_len` tokens:

  [eot] prompt... completion... [eot] [pad]...

A token whose prediction is not scored is stored as -(id + 1) (`masked`): the leading end-of-text, the prompt and
the padding. So the loss (`train_step.loss_fn`) counts exactly the completion's tokens and the end-of-text that
closes it, the prompt is context only, and the padding (end-of-text tokens after the example) is never a target.
The rows are laid end to end with one more masked end-of-text, so the pretraining stream's windows (seq_len + 1
tokens at stride seq_len, `data/pipeline.py`) are exactly the rows: the shuffled, per-process, exactly resumable
order (`data/mixture.py`), validation batches, checkpointed data position and every guard apply unchanged.

One example per row, padded, not several packed per row: packing without the examples seeing each other needs a
segment mask in every attention kernel (xla, block-sparse, cuDNN, splash); padding needs none. The padding share is
measured and reported (`data/sft/padding_fraction`), and `TrainConfig.seq_len` near the longest example keeps it
small.

Bad examples (a missing field, an empty completion, one that does not fit the row) are a one-line error naming the
file and line, or with `FinetuneConfig.on_bad_example = 'skip'` counted by reason (`data/sft/skipped/<reason>`);
an answer is never truncated.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from gpt3_jax.finetune.config import FinetuneConfig


def masked(ids) -> np.ndarray:
  """Token ids as stored when their prediction is not scored."""
  return -(np.asarray(ids, np.int64) + 1)


def messages_to_pair(messages: Sequence[dict]) -> Tuple[str, str]:
  """A chat as (prompt, completion) with a plain template: one 'Role: content' line per message; the last message
  is the completion, after its 'Role:' (and a space)."""
  lines = [f"{str(m['role']).capitalize()}: {m['content']}\n" for m in messages[:-1]]
  return "".join(lines) + f"{str(messages[-1]['role']).capitalize()}:", " " + str(messages[-1]["content"])


def read_examples(path: str, cfg: FinetuneConfig, skipped: collections.Counter) -> List[Tuple[str, str, int]]:
  """(prompt, completion, line number) of each good line of a JSONL file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"FinetuneConfig: {path!r} does not exist; pass a JSONL file of "
                            f"{{{cfg.prompt_field!r}, {cfg.completion_field!r}}} lines")
  out = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{number}: not JSON ({e.msg}); each line is one JSON object") from None
      if isinstance(row, dict) and isinstance(row.get(cfg.messages_field), list) and row[cfg.messages_field]:
        pair = messages_to_pair(row[cfg.messages_field])
      elif isinstance(row, dict) and cfg.prompt_field in row and cfg.completion_field in row:
        pair = (str(row[cfg.prompt_field]), str(row[cfg.completion_field]))
      else:
        _bad(cfg, skipped, "missing_field", f"{path}:{number}: no {cfg.prompt_field!r} and {cfg.completion_field!r} "
             f"fields (nor a {cfg.messages_field!r} list); set FinetuneConfig.prompt_field / completion_field")
        continue
      if not pair[1].strip():
        _bad(cfg, skipped, "empty_completion", f"{path}:{number}: the completion is empty")
        continue
      out.append((pair[0], pair[1], number))
  return out


def _bad(cfg: FinetuneConfig, skipped: collections.Counter, reason: str, message: str) -> None:
  if cfg.on_bad_example == "error":
    raise ValueError(f"{message} (or set FinetuneConfig.on_bad_example = 'skip' to count and skip such examples)")
  skipped[reason] += 1


def example_row(tokenizer, prompt: str, completion: str, seq_len: int) -> Optional[np.ndarray]:
  """The stored row [seq_len] of one example, or None when it does not fit (prompt, completion and the two
  end-of-text tokens need seq_len positions at most)."""
  eot = tokenizer.eot_id
  prompt_ids, completion_ids = tokenizer.encode(prompt), tokenizer.encode(completion)
  used = 1 + len(prompt_ids) + len(completion_ids) + 1
  if used > seq_len:
    return None
  row = np.concatenate([masked([eot] + prompt_ids), np.asarray(completion_ids + [eot], np.int64),
                        masked([eot] * (seq_len - used))])
  return row.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class SFTStream:
  """The train and validation rows of the examples, laid end to end (`masked` marks unscored tokens)."""
  name: str
  train_tokens: np.ndarray
  valid_tokens: np.ndarray
  masked: bool = True


@dataclasses.dataclass(frozen=True)
class SFTCorpus:
  """What the trainer reads from a corpus (`data/corpus.Corpus`'s interface), for fine-tuning examples."""
  tokenizer: object
  tokenizer_path: str
  streams: Tuple[SFTStream, ...]
  weights: Tuple[float, ...]
  vocab_size: int
  fingerprint: str
  stats: Dict[str, float]

  def mixture(self, *, seq_len: int, global_batch_size: int, seed: int):
    from gpt3_jax.data import mixture as mixture_lib
    constant = {f"data/sft/{k}": float(v) for k, v in self.stats.items()}
    return mixture_lib.Mixture([self.streams[0].train_tokens], (1.0,), seq_len=seq_len,
                               global_batch_size=global_batch_size, seed=seed, names=["sft"],
                               constant_metrics=constant)


@dataclasses.dataclass(frozen=True)
class SFTData:
  """Fine-tuning examples with the base model's tokenizer; `check()` reads them (cheap, before any write) and
  `prepare(seq_len)` makes the rows."""
  cfg: FinetuneConfig
  tokenizer_path: str
  vocab_size: int  # the base model's

  @property
  def seed(self) -> int:
    return self.cfg.seed

  def _splits(self, skipped: collections.Counter):
    cfg = self.cfg
    if not cfg.train_path:
      raise ValueError("FinetuneConfig.train_path is empty; set it to a JSONL file of prompt / completion lines")
    train = read_examples(cfg.train_path, cfg, skipped)
    if cfg.validation_path:
      valid = read_examples(cfg.validation_path, cfg, skipped)
    else:
      cut = len(train) - max(1, int(round(len(train) * cfg.validation_fraction)))
      train, valid = train[:cut], train[cut:]
    if not train or not valid:
      raise ValueError(f"FinetuneConfig: {len(train)} training and {len(valid)} validation examples; both need at "
                       f"least one (check FinetuneConfig.train_path / validation_path)")
    return train, valid

  def check(self) -> None:
    self._splits(collections.Counter())

  def prepare(self, seq_len: int) -> SFTCorpus:
    from gpt3_jax.data.tokenizer import load_tokenizer
    if not self.tokenizer_path:
      raise ValueError("fine-tuning needs the base model's tokenizer; TrainConfig.init_from's workdir has none")
    tokenizer = load_tokenizer(self.tokenizer_path)
    skipped: collections.Counter = collections.Counter()
    train, valid = self._splits(skipped)
    paths = {"train": self.cfg.train_path, "validation": self.cfg.validation_path or self.cfg.train_path}
    streams, stats, padding = [], {}, 0
    for split, examples in (("train", train), ("validation", valid)):
      rows = []
      for prompt, completion, number in examples:
        row = example_row(tokenizer, prompt, completion, seq_len)
        if row is None:
          _bad(self.cfg, skipped, "too_long", f"{paths[split]}:{number}: the example needs more than the sequence's "
               f"{seq_len} tokens (prompt, completion and two end-of-text); raise TrainConfig.seq_len (up to "
               f"n_ctx) or shorten it")
          continue
        rows.append(row)
        padding += seq_len - 1 - int(np.flatnonzero(row >= 0)[-1])  # masked positions after the closing eot
      if not rows:
        raise ValueError(f"FinetuneConfig: no {split} example fits {seq_len} tokens; raise TrainConfig.seq_len")
      streams.append(np.concatenate(rows + [masked([tokenizer.eot_id]).astype(np.int32)]))
      stats[f"{split}_examples"] = len(rows)
    stats.update({f"skipped/{k}": v for k, v in sorted(skipped.items())})
    stats["padding_fraction"] = padding / ((stats["train_examples"] + stats["validation_examples"]) * seq_len)
    fingerprint = hashlib.sha256(b"".join(s.tobytes() for s in streams)).hexdigest()[:16]
    return SFTCorpus(tokenizer=tokenizer, tokenizer_path=self.tokenizer_path,
                     streams=(SFTStream("sft", streams[0], streams[1]),), weights=(1.0,),
                     vocab_size=self.vocab_size, fingerprint=fingerprint, stats=stats)
