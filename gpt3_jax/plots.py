"""Figures for exploring runs (the notebook): training curves, attention masks and attention weights.

Each function returns a matplotlib Figure built without pyplot (no backend is chosen or switched, so they work in
scripts and inline in notebooks alike); `fig.savefig(path)` writes it.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from gpt3_jax.training.metrics import read_metrics


def _figure(width: float, height: float, cols: int = 1):
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width, height), layout="constrained")
  return fig, fig.subplots(1, cols, squeeze=False)[0]


def training_curves(workdir: str, unigram: Optional[float] = None):
  """Training and validation loss (with the unigram baseline as a line) and the learning rate, against tokens."""
  metrics = read_metrics(workdir)
  train, evaluation = metrics.get("train", {}), metrics.get("eval", {})
  if "loss" not in train:
    raise ValueError(f"{workdir}: metrics.jsonl has no training loss yet; train the run first")
  steps, tokens = train["tokens_seen"]
  per_step = dict(zip(steps, tokens))
  fig, (loss_ax, lr_ax) = _figure(10, 3.6, cols=2)
  loss_ax.plot([per_step[s] for s in train["loss"][0]], train["loss"][1], lw=1, label="train")
  if "loss" in evaluation:
    rate = tokens[-1] / steps[-1] if steps[-1] else 0.0  # evaluations run at steps the log may not have
    loss_ax.plot([per_step.get(s, s * rate) for s in evaluation["loss"][0]], evaluation["loss"][1], "o-",
                 ms=4, label="validation")
  if unigram is not None:
    loss_ax.axhline(unigram, color="gray", ls="--", lw=1, label=f"unigram baseline {unigram:.2f}")
  loss_ax.set(xlabel="tokens", ylabel="loss (nats/token)", title="loss")
  loss_ax.legend()
  lr_ax.plot([per_step[s] for s in train["learning_rate"][0]], train["learning_rate"][1])
  lr_ax.set(xlabel="tokens", ylabel="learning rate", title="learning rate (warmup, cosine decay)")
  return fig


def attention_masks(windows: Sequence[Optional[int]], n: int):
  """The band mask of each distinct window (None: dense causal) over n positions, query rows, key columns."""
  from gpt3_jax.model.attention import band_mask
  distinct = sorted(set(windows), key=lambda w: -1 if w is None else w)
  fig, axes = _figure(3.2 * len(distinct), 3.2, cols=len(distinct))
  positions = np.arange(n)
  for ax, window in zip(axes, distinct):
    ax.imshow(np.asarray(band_mask(positions, positions, window)), cmap="Blues", vmin=0, vmax=1.3)
    ax.set(title="dense causal" if window is None else f"local band, window {window}", xlabel="key j",
           ylabel="query i")
  return fig


def attention_heads(weights: np.ndarray, labels: Optional[Sequence[str]] = None, title: str = ""):
  """One layer's softmax weights [H, T, T] as one image per head (rows: queries, columns: keys)."""
  heads = weights.shape[0]
  fig, axes = _figure(3.4 * heads, 3.6, cols=heads)
  for h, ax in enumerate(axes):
    ax.imshow(weights[h], cmap="viridis", vmin=0, vmax=max(float(weights[h].max()), 1e-6))
    ax.set_title(f"{title} head {h}".strip(), fontsize=9)
    if labels is not None:
      ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
      ax.set_yticks(range(len(labels)), labels, fontsize=6)
  return fig
