"""Validation loss during training: every source of the data mixture, and their weighted mean."""

from __future__ import annotations

from typing import Dict, Sequence

import jax
import numpy as np

from gpt3_jax.data import pipeline
from gpt3_jax.training.assembly import Assembly


def process_rows(batch: np.ndarray) -> np.ndarray:
  """This process's share of a global batch (rows are split evenly over processes)."""
  local = batch.shape[0] // jax.process_count()
  return batch[jax.process_index() * local:(jax.process_index() + 1) * local]


def classification_metrics(predicted: np.ndarray, labels: np.ndarray, num_labels: int) -> Dict[str, float]:
  """Accuracy and macro-F1 (the unweighted mean over classes of 2 TP / (2 TP + FP + FN); a class absent from
  both the labels and the predictions is left out of the mean)."""
  f1s = []
  for c in range(num_labels):
    tp = np.sum((predicted == c) & (labels == c))
    fp, fn = np.sum((predicted == c) & (labels != c)), np.sum((predicted != c) & (labels == c))
    if tp + fp + fn:
      f1s.append(2 * tp / (2 * tp + fp + fn))
  return {"accuracy": float(np.mean(predicted == labels)), "macro_f1": float(np.mean(f1s)),
          "examples": float(len(labels))}


def evaluate(asm: Assembly, params, valid_tokens: np.ndarray, *, batch_size: int, max_batches: int,
             name: str = "") -> Dict[str, float]:
  """{'loss': mean validation NLL (nats/token; nats/example for a classifier)} over the first `max_batches` full
  batches of one held-out stream; a classifier adds accuracy, macro_f1 and the number of examples."""
  total, count, predicted, labels = 0.0, 0.0, [], []
  for batch in pipeline.eval_batches(valid_tokens, seq_len=asm.seq_len, batch_size=batch_size,
                                     max_batches=max_batches, drop_remainder=True):
    nll, n, *classes = asm.eval_step(params, asm.place_batch(process_rows(batch)))
    total, count = total + float(nll), count + float(n)
    if classes:
      predicted.append(np.asarray(classes[0]))
      labels.append(np.asarray(classes[1]))
  if count == 0:
    where = f" of source {name!r}" if name else ""
    raise ValueError(f"the validation split{where} has fewer than {batch_size} windows of {asm.seq_len + 1} tokens; "
                     f"use more data, a larger DataConfig.validation_fraction or a smaller batch")
  metrics = {"loss": total / count}
  if predicted:
    metrics.update(classification_metrics(np.concatenate(predicted), np.concatenate(labels), asm.model.num_labels))
  return metrics


def evaluate_sources(asm: Assembly, params, streams: Sequence, weights: Sequence[float], *, batch_size: int,
                     max_batches: int) -> Dict[str, float]:
  """{'loss': the mixture-weighted mean, '<source>/loss': each source's} (one source: its metrics as they
  are). Sources of weight 0 are reported but not in the mean."""
  if len(streams) == 1:
    return evaluate(asm, params, streams[0].valid_tokens, batch_size=batch_size, max_batches=max_batches)
  losses = {s.name: evaluate(asm, params, s.valid_tokens, batch_size=batch_size, max_batches=max_batches,
                             name=s.name)["loss"] for s in streams}
  mean = sum(w * losses[s.name] for s, w in zip(streams, weights)) / sum(weights)
  return {"loss": mean, **{f"{name}/loss": loss for name, loss in losses.items()}}
