"""The paper's optimizer (Appendix B): Adam(0.9, 0.95, 1e-8), decoupled weight decay 0.1 on matrices only,
global-norm clipping at 1.0, and a token-based LR schedule: linear warmup, cosine decay to 10% of peak, then flat.
For sweeps, a warmup-stable-decay schedule (`schedule = 'wsd'`) beside it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


SCHEDULES = ("cosine", "wsd")
COOLDOWN_SHAPES = ("linear", "1-sqrt")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Optimizer hyper-parameters. Schedule lengths are in tokens, as in the paper.

  Paper values: warmup 375M tokens, cosine decay over 260B tokens to 10% of the peak, 300B tokens in total.

  schedule 'wsd' (warmup-stable-decay; Hu et al. 2024, Hägele et al. 2024): the same warmup, the peak until
  `cooldown_start_tokens`, then over `cooldown_tokens` down to final_lr_fraction x peak ('linear', or '1-sqrt':
  peak - (peak - floor) * sqrt(progress)), then flat; `decay_tokens` is unused. The stable phase is the same for
  every cool-down start, so a cool-down branched from a stable checkpoint (`TrainConfig.branch_from`) equals a
  straight run with that schedule: one long stable run gives the losses at several token budgets.
  """

  schedule: str = "cosine"
  peak_learning_rate: float = 6e-4
  warmup_tokens: float = 375e6
  decay_tokens: float = 260e9
  final_lr_fraction: float = 0.1
  cooldown_start_tokens: float = 0.0
  cooldown_tokens: float = 0.0
  cooldown_shape: str = "linear"
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.1
  grad_clip_norm: float = 1.0
  # Parameters kept as they are (full fine-tuning with a frozen part): regular expressions matched in full against
  # parameter names such as 'wte', 'wpe', 'ln_f/scale', 'layers/block/attention/qkv_kernel' (scanned layers are
  # one stacked parameter each), e.g. ('wte', 'wpe') or ('layers/.*/ln_.*',). They get no gradient work, no
  # optimizer state and no update (weight decay included).
  frozen: Tuple[str, ...] = ()
  # The first `frozen_layers` Transformer layers (their attention, MLP and LayerNorms) are kept as they are too.
  # With scanned layers each stacked parameter keeps its first rows: their gradient is cut and their update
  # (weight decay included) is zero; Adam still holds (zero) moments for the whole stacked parameter.
  frozen_layers: int = 0

  def __post_init__(self):
    from gpt3_jax.config_types import check_choice, check_finite
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
    check("cooldown_start_tokens", low=0.0)
    check("cooldown_tokens", low=0.0)
    check_choice("OptimizerConfig", "schedule", self.schedule, SCHEDULES)
    check_choice("OptimizerConfig", "cooldown_shape", self.cooldown_shape, COOLDOWN_SHAPES)
    if self.schedule == "wsd" and (self.cooldown_tokens <= 0 or self.cooldown_start_tokens < self.warmup_tokens):
      raise ValueError(f"OptimizerConfig.schedule='wsd' needs cooldown_tokens > 0 and cooldown_start_tokens >= "
                       f"warmup_tokens ({self.warmup_tokens:g}); got {self.cooldown_tokens:g} and "
                       f"{self.cooldown_start_tokens:g}")
    if not isinstance(self.frozen_layers, int) or self.frozen_layers < 0:
      raise ValueError(f"OptimizerConfig.frozen_layers={self.frozen_layers!r} must be an int >= 0, e.g. 2")
    for pattern in self.frozen:
      try:
        re.compile(pattern)
      except re.error as e:
        raise ValueError(f"OptimizerConfig.frozen: {pattern!r} is not a regular expression ({e}); e.g. "
                         f"OptimizerConfig.frozen = ('wte', 'wpe')") from None


def param_name(path) -> str:
  """'layers/block/attention/qkv_kernel' for a parameter's tree path."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


_UNIT = re.compile(r"layers(?:_(?P<unit>\d+))?/(?P<kind>block|dense|local)/.*")


def _layers_before(name: str, n: int) -> Tuple[bool, int]:
  """For the first `n` layers: (is the whole parameter theirs, how many leading rows of a stacked one are).
  A unit is one layer ('block') or a (dense, local) pair: layer 2u is unit u's dense block, 2u + 1 its local."""
  m = _UNIT.fullmatch(name)
  if m is None or n == 0:
    return False, 0
  rows = {"block": n, "dense": (n + 1) // 2, "local": n // 2}[m["kind"]]
  if m["unit"] is None:  # scanned: one stacked parameter of every unit
    return False, rows
  return int(m["unit"]) < rows, 0


def frozen_mask(cfg: OptimizerConfig, params):
  """True for the parameters `cfg.frozen` names (and, unscanned, the first `frozen_layers` layers' parameters).
  A pattern that names none is a one-line error."""
  names = [param_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  for pattern in cfg.frozen:
    if not any(re.fullmatch(pattern, n) for n in names):
      raise ValueError(f"OptimizerConfig.frozen: {pattern!r} matches no parameter; names are e.g. "
                       f"{', '.join(names[:4])}")
  return jax.tree_util.tree_map_with_path(
      lambda path, _: (any(re.fullmatch(p, param_name(path)) for p in cfg.frozen)
                       or _layers_before(param_name(path), cfg.frozen_layers)[0]), params)


def frozen_rows(cfg: OptimizerConfig, tree):
  """Per leaf, how many leading rows (stacked layers) `frozen_layers` keeps (0: none)."""
  return jax.tree_util.tree_map_with_path(lambda path, _: _layers_before(param_name(path), cfg.frozen_layers)[1],
                                          tree)


def _zero_frozen_rows(cfg: OptimizerConfig) -> optax.GradientTransformation:
  """The last stage when layers are frozen inside stacked parameters: their rows' updates are exactly zero."""
  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, r: u.at[:r].set(0) if r else u, updates, frozen_rows(cfg, updates)), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def stop_frozen_gradients(cfg: OptimizerConfig, params):
  """The parameters with `cfg.frozen`'s behind stop_gradient: their gradient is zero and never computed
  (stacked parameters' frozen rows: their gradient is zero)."""
  if cfg.frozen_layers:
    params = jax.tree.map(lambda x, r: jnp.concatenate([jax.lax.stop_gradient(x[:r]), x[r:]]) if r else x,
                          params, frozen_rows(cfg, params))
  if not cfg.frozen and not cfg.frozen_layers:
    return params
  return jax.tree.map(lambda x, frozen: jax.lax.stop_gradient(x) if frozen else x, params, frozen_mask(cfg, params))


def learning_rate_at_tokens(cfg: OptimizerConfig, tokens) -> np.ndarray:
  """LR after `tokens` training tokens. NumPy on the host: the train loop calls it every step, and a device
  computation here would wait for the step in flight."""
  tokens = np.asarray(tokens, np.float64)
  peak, floor = cfg.peak_learning_rate, cfg.peak_learning_rate * cfg.final_lr_fraction
  warm = peak * tokens / max(cfg.warmup_tokens, 1.0)
  if cfg.schedule == "wsd":
    progress = np.clip((tokens - cfg.cooldown_start_tokens) / cfg.cooldown_tokens, 0.0, 1.0)
    fall = np.sqrt(progress) if cfg.cooldown_shape == "1-sqrt" else progress
    return np.where(tokens < cfg.warmup_tokens, warm, peak - (peak - floor) * fall)
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


def for_model(cfg: OptimizerConfig, model_cfg) -> OptimizerConfig:
  """The optimizer config a model trains with: a LoRA model (lora_rank > 0) freezes every parameter but the
  adapters (and a classifier's head) unless `frozen` says otherwise."""
  if cfg.frozen_layers > getattr(model_cfg, "n_layers", cfg.frozen_layers):
    raise ValueError(f"OptimizerConfig.frozen_layers={cfg.frozen_layers} but the model has {model_cfg.n_layers} "
                     f"layers; use at most {model_cfg.n_layers}")
  if getattr(model_cfg, "lora_rank", 0) and not cfg.frozen:
    from gpt3_jax.model import lora
    head = "|score" if getattr(model_cfg, "class_labels", ()) else ""
    return dataclasses.replace(cfg, frozen=(f"(?!(?:{lora.ADAPTER_PATTERN}{head})$).*",))
  return cfg


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformationExtraArgs:
  """Clip -> Adam -> decoupled weight decay, WITHOUT the learning rate: the train step multiplies the result by
  -lr, with lr computed on the host from the exact number of tokens seen (so the schedule stays a function of
  tokens with or without the batch-size ramp). Together this is exactly optax.adamw after clipping.
  update() takes an optional `grad_norm=`: the gradients' global norm, when the caller has it already."""
  adamw = optax.chain(
      clip_by_global_norm(cfg.grad_clip_norm),
      optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
      optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask),
  )
  if cfg.frozen_layers:
    adamw = optax.chain(adamw, _zero_frozen_rows(cfg))
  if not cfg.frozen and not cfg.frozen_layers:
    return adamw
  labels = lambda params: jax.tree.map(lambda f: "frozen" if f else "train", frozen_mask(cfg, params))
  return optax.multi_transform({"train": adamw, "frozen": optax.set_to_zero()}, labels)


def apply_learning_rate(updates, learning_rate):
  """The last AdamW stage: scale the direction by -lr."""
  return jax.tree.map(lambda u: -learning_rate * u, updates)
