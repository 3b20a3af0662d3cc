"""Fine-tuning data: prompt / completion (or text / label) examples as rows the pretraining machinery trains on.

Each generation example becomes one row of `seq_len` tokens:

  [eot] prompt... completion... [eot] [pad]...

A token whose prediction is not scored is stored as -(id + 1) (`masked`, training/row_format.py): the leading
end-of-text, the prompt and the padding. So the loss (`train_step.loss_fn`) counts exactly the completion's tokens
and the end-of-text that closes it, the prompt is context only, and the padding (end-of-text tokens after the
example) is never a target. A classification example (FinetuneConfig.task = 'classify') is

  [eot] text... [pad]... [label]

with the class index in the last position (row_format.label_code); the classifier's head reads the last text
token, and its loss is the cross-entropy over the labels.

The rows are laid end to end with one more masked end-of-text, so the pretraining stream's windows (seq_len + 1
tokens at stride seq_len, `data/pipeline.py`) are exactly the rows: the shuffled, per-process, exactly resumable
order (`data/mixture.py`), validation batches, checkpointed data position and every guard apply unchanged.

One example per row, padded, not several packed per row: packing without the examples seeing each other needs a
segment mask in every attention kernel (xla, block-sparse, cuDNN, splash); padding needs none. The padding share is
measured and reported (`data/sft/padding_fraction`), and `TrainConfig.seq_len` near the longest example keeps it
small.

Bad examples (a missing field, an empty completion or text, an unknown label, one that does not fit the row) are a
one-line error naming the file and line (`examples.py`), or with `FinetuneConfig.on_bad_example = 'skip'` counted by
reason (`data/sft/skipped/<reason>`); an answer is never truncated.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from gpt3_jax.finetune import examples
from gpt3_jax.finetune.config import FinetuneConfig
from gpt3_jax.training.row_format import label_code, masked


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


def classification_row(tokenizer, text: str, label: int, seq_len: int, vocab_size: int) -> Optional[np.ndarray]:
  """The stored row [seq_len] of one labelled text, or None when it does not fit: [eot] text [pad]... [label]
  (the leading end-of-text and the padding masked; the head reads the last text token; the last position holds
  the class index as row_format.label_code)."""
  eot = tokenizer.eot_id
  ids = tokenizer.encode(text)
  used = 1 + len(ids) + 1
  if used > seq_len:
    return None
  row = np.concatenate([masked([eot]), np.asarray(ids, np.int64), masked([eot] * (seq_len - used)),
                        [label_code(label, vocab_size)]])
  return row.astype(np.int32)


def label_prior_loss(train_labels: Sequence[int], valid_labels: Sequence[int], num_labels: int) -> float:
  """Cross-entropy (nats/example) of the validation labels under the add-one training label frequencies: the
  baseline a classifier must beat (as the unigram model is a language model's)."""
  counts = np.bincount(np.asarray(train_labels), minlength=num_labels) + 1.0
  return float(-np.mean(np.log(counts / counts.sum())[np.asarray(valid_labels)]))


@dataclasses.dataclass(frozen=True)
class SFTStream:
  """The train and validation rows of the examples, laid end to end (`masked` marks unscored tokens)."""
  name: str
  train_tokens: np.ndarray
  valid_tokens: np.ndarray
  masked: bool = True


@dataclasses.dataclass(frozen=True)
class SFTCorpus:
  """What the trainer reads from a corpus (`data/corpus.Corpus`'s interface), for fine-tuning examples.
  `baseline` is the loss to beat when the unigram one does not apply (a classifier's label prior)."""
  tokenizer: object
  tokenizer_path: str
  streams: Tuple[SFTStream, ...]
  weights: Tuple[float, ...]
  vocab_size: int
  fingerprint: str
  stats: Dict[str, float]
  baseline: Optional[float] = None

  def mixture(self, *, seq_len: int, global_batch_size: int, seed: int):
    from gpt3_jax.data import mixture as mixture_lib
    constant = {f"data/sft/{k}": float(v) for k, v in self.stats.items()}
    return mixture_lib.Mixture([self.streams[0].train_tokens], (1.0,), seq_len=seq_len,
                               global_batch_size=global_batch_size, seed=seed, names=["sft"],
                               constant_metrics=constant)


@dataclasses.dataclass(frozen=True)
class SFTData:
  """Fine-tuning examples with the base model's tokenizer; `check()` reads them (cheap, before any write),
  `labels()` are a classification's class names and `prepare(seq_len)` makes the rows."""
  cfg: FinetuneConfig
  tokenizer_path: str
  vocab_size: int  # the base model's

  @property
  def seed(self) -> int:
    return self.cfg.seed

  @functools.cached_property
  def _read(self):
    """(train examples, validation examples, skipped counts, class names in index order (() for generation))."""
    cfg, skipped = self.cfg, collections.Counter()
    if cfg.tfds_name:
      train_source, valid_source = examples.tfds_splits(cfg)
      train = examples.parse(examples.tfds_records(cfg, cfg.train_split, train_source), cfg, skipped)
      valid = (examples.parse(examples.tfds_records(cfg, cfg.validation_split, valid_source), cfg, skipped)
               if valid_source is not None else None)
    elif not cfg.train_path:
      raise ValueError("FinetuneConfig.train_path is empty; set it to a JSONL file of examples (or set "
                       "FinetuneConfig.tfds_name)")
    else:
      train = examples.read_examples(cfg.train_path, cfg, skipped)
      valid = examples.read_examples(cfg.validation_path, cfg, skipped) if cfg.validation_path else None
    if valid is None:
      cut = len(train) - max(1, int(round(len(train) * cfg.validation_fraction)))
      train, valid = train[:cut], train[cut:]
    if not train or not valid:
      raise ValueError(f"FinetuneConfig: {len(train)} training and {len(valid)} validation examples; both need at "
                       f"least one (check FinetuneConfig.train_path / validation_path / tfds_name)")
    names = ()
    if cfg.task == "classify":
      names = cfg.labels or tuple(sorted({label for _, label, _ in train}))
      train, valid = (self._known_labels(split, names, skipped) for split in (train, valid))
      if len(names) < 2:
        raise ValueError(f"FinetuneConfig: the training examples have one label {names!r}; a classification "
                         f"needs at least two")
    return train, valid, skipped, names

  def _known_labels(self, split, names, skipped):
    kept = []
    for text, label, where in split:
      if label not in names:
        examples.bad(self.cfg, skipped, "unknown_label", f"{where}: label {label!r} is not one of {list(names)} "
                     f"(set FinetuneConfig.labels to name them all)")
        continue
      kept.append((text, label, where))
    return kept

  def check(self) -> None:
    self._read  # pylint: disable=pointless-statement

  def labels(self) -> Tuple[str, ...]:
    """A classification's class names in index order (() for generation)."""
    return self._read[3]

  def prepare(self, seq_len: int) -> SFTCorpus:
    from gpt3_jax.data.tokenizer import load_tokenizer
    if not self.tokenizer_path:
      raise ValueError("fine-tuning needs the base model's tokenizer; TrainConfig.init_from's workdir has none")
    tokenizer = load_tokenizer(self.tokenizer_path)
    train, valid, skipped, names = self._read
    skipped, index = collections.Counter(skipped), {name: i for i, name in enumerate(names)}
    streams, stats, padding, labels = [], {}, 0, {}
    for split, split_examples in (("train", train), ("validation", valid)):
      rows = []
      for example in split_examples:
        a, b, _ = example
        row = (classification_row(tokenizer, a, index[b], seq_len, self.vocab_size) if names
               else example_row(tokenizer, a, b, seq_len))
        if row is None:
          examples.bad(self.cfg, skipped, "too_long", f"{example[2]}: the example needs more than the sequence's "
                       f"{seq_len} tokens (with its two end-of-text or label positions); raise TrainConfig.seq_len "
                       f"(up to n_ctx) or shorten it")
          continue
        rows.append(row)
        padding += seq_len - 1 - int(np.flatnonzero(row >= 0)[-1])  # masked positions after the last scored one
        labels.setdefault(split, []).append(index.get(b))
      if not rows:
        raise ValueError(f"FinetuneConfig: no {split} example fits {seq_len} tokens; raise TrainConfig.seq_len")
      streams.append(np.concatenate(rows + [masked([tokenizer.eot_id]).astype(np.int32)]))
      stats[f"{split}_examples"] = len(rows)
    stats.update({f"skipped/{k}": v for k, v in sorted(skipped.items())})
    stats["padding_fraction"] = padding / ((stats["train_examples"] + stats["validation_examples"]) * seq_len)
    baseline = label_prior_loss(labels["train"], labels["validation"], len(names)) if names else None
    fingerprint = hashlib.sha256(b"".join(s.tobytes() for s in streams)).hexdigest()[:16]
    return SFTCorpus(tokenizer=tokenizer, tokenizer_path=self.tokenizer_path,
                     streams=(SFTStream("sft", streams[0], streams[1]),), weights=(1.0,),
                     vocab_size=self.vocab_size, fingerprint=fingerprint, stats=stats, baseline=baseline)
