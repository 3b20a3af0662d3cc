"""`--mode=plan`: what a configuration costs, computed without allocating the model (jax.eval_shape)."""

from __future__ import annotations

import math
from typing import Any, Dict

import jax

from gpt3_jax.model.config import ModelConfig, flops_per_token, param_counts
from gpt3_jax.training import train_state


def count_abstract_params(cfg: ModelConfig) -> int:
  """Parameters of the real Flax model (padded vocabulary included), from shapes only."""
  shapes = jax.eval_shape(lambda r: train_state.nn.unbox(train_state.init_params_fn(cfg)(r)), jax.random.key(0))
  return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))


def plan_report(cfg: ModelConfig) -> Dict[str, Any]:
  counts = param_counts(cfg)
  stored = count_abstract_params(cfg)
  if stored != param_counts(cfg, padded=True)["params"]:
    raise AssertionError(f"closed-form count {param_counts(cfg, padded=True)['params']} != model's {stored}")
  return {
      "params": counts["params"],
      "non_embedding_params": counts["non_embedding_params"],
      "stored_params": stored,
      "flops_per_token": flops_per_token(cfg),
      "n_ctx": cfg.n_ctx, "n_layers": cfg.n_layers, "d_model": cfg.d_model, "n_heads": cfg.n_heads,
      "d_head": cfg.d_head, "vocab_size": cfg.vocab_size, "padded_vocab_size": cfg.padded_vocab_size,
      "attention_pattern": cfg.attention_pattern, "local_window": cfg.local_window,
  }


def format_report(report: Dict[str, Any]) -> str:
  return "\n".join([
      f"model: {report['n_layers']} layers, d_model {report['d_model']}, {report['n_heads']} heads x "
      f"{report['d_head']}, n_ctx {report['n_ctx']}, vocab {report['vocab_size']} (padded "
      f"{report['padded_vocab_size']}), attention {report['attention_pattern']}",
      f"parameters: {report['params'] / 1e6:,.1f}M total, {report['non_embedding_params'] / 1e6:,.1f}M "
      f"non-embedding ({report['stored_params'] / 1e6:,.1f}M stored with the padded vocabulary)",
      f"model FLOPs per token (6N + 12LHQT): {report['flops_per_token']:.4g}",
  ])
