"""The paper's optimizer (Appendix B): Adam(0.9, 0.95, 1e-8), decoupled weight decay 0.1 on matrices only,
global-norm clipping at 1.0, and a token-based LR schedule: linear warmup, cosine decay to 10% of peak, then flat.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Optimizer hyper-parameters. Schedule lengths are in tokens, as in the paper.

  Paper values: warmup 375M tokens, cosine decay over 260B tokens to 10% of the peak, 300B tokens in total.
  """

  peak_learning_rate: float = 6e-4
  warmup_tokens: float = 375e6
  decay_tokens: float = 260e9
  final_lr_fraction: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.1
  grad_clip_norm: float = 1.0

  def __post_init__(self):
    from gpt3_jax.config_types import check_finite
    check = lambda name, **bounds: check_finite("OptimizerConfig", name, getattr(self, name),
                                                example=getattr(OptimizerConfig, name), **bounds)
    check("peak_learning_rate", low=0.0, low_open=True)
    check("warmup_tokens", low=0.0)
    check("decay_tokens", low=0.0, low_open=True)
    check("final_lr_fraction", low=0.0, high=1.0)
    check("b1", low=0.0, high=1.0)
    check("b2", low=0.0, high=1.0)
    check("eps", low=0.0, low_open=True)
    check("weight_decay", low=0.0)
    check("grad_clip_norm", low=0.0)


def learning_rate_at_tokens(cfg: OptimizerConfig, tokens) -> np.ndarray:
  """LR after `tokens` training tokens. NumPy on the host: the train loop calls it every step, and a device
  computation here would wait for the step in flight."""
  tokens = np.asarray(tokens, np.float64)
  peak, floor = cfg.peak_learning_rate, cfg.peak_learning_rate * cfg.final_lr_fraction
  warm = peak * tokens / max(cfg.warmup_tokens, 1.0)
  progress = np.clip((tokens - cfg.warmup_tokens) / max(cfg.decay_tokens - cfg.warmup_tokens, 1.0), 0.0, 1.0)
  cosine = floor + (peak - floor) * 0.5 * (1.0 + np.cos(math.pi * progress))
  return np.where(tokens < cfg.warmup_tokens, warm, cosine)


def decay_mask(params):
  """True for parameters that get weight decay: the dense weight matrices ('*kernel'), not biases, LayerNorm
  parameters or the (token / position) embeddings."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: str(getattr(path[-1], "key", "")).endswith("kernel"), params)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformationExtraArgs:
  """optax.clip_by_global_norm (same arithmetic) that can reuse a norm the caller already computed: pass
  `grad_norm=` to update() (the train step computes it for its metrics; recomputing it reads every gradient
  once more)."""

  def update(updates, state, params=None, *, grad_norm=None, **extra_args):
    del params, extra_args
    norm = optax.tree.norm(updates) if grad_norm is None else grad_norm
    keep = norm < max_norm
    return jax.tree.map(lambda g: jnp.where(keep, g, (g / norm.astype(g.dtype)) * max_norm), updates), state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformationExtraArgs:
  """Clip -> Adam -> decoupled weight decay, WITHOUT the learning rate: the train step multiplies the result by
  -lr, with lr computed on the host from the exact number of tokens seen (so the schedule stays a function of
  tokens with or without the batch-size ramp). Together this is exactly optax.adamw after clipping.
  update() takes an optional `grad_norm=`: the gradients' global norm, when the caller has it already."""
  return optax.chain(
      clip_by_global_norm(cfg.grad_clip_norm),
      optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
      optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask),
  )


def apply_learning_rate(updates, learning_rate):
  """The last AdamW stage: scale the direction by -lr."""
  return jax.tree.map(lambda u: -learning_rate * u, updates)
