"""Log-likelihood scoring of token sequences (perplexity, multiple-choice evaluation).

The sequences are right-padded to a common length (rounded up to a multiple of SCORE_BUCKET so that similar
batches share one compilation) and run through the plain causal model: padding after a sequence cannot change its
logits. The log-probability of token i is read from the log-softmax of the logits at position i - 1 (over the
real vocabulary: padded entries have probability exactly 0).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gpt3_jax.model.config import ModelConfig
from gpt3_jax.model.transformer import GPT, unboxed_params

SCORE_BUCKET = 16


@functools.partial(jax.jit, static_argnames=("cfg",))
def _token_logprobs(params, tokens, *, cfg: ModelConfig):
  """tokens [B, T] -> log p(tokens[:, i] | tokens[:, :i]) for i >= 1, as [B, T - 1] float32."""
  logits = GPT(cfg).apply({"params": params}, tokens)
  logprobs = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logprobs, tokens[:, 1:, None], axis=-1)[..., 0]


def score(cfg: ModelConfig, params, token_lists: Sequence[Sequence[int]], *, batch_size: int = 16) -> list[dict]:
  """Per-token log-probabilities of each sequence under the model.

  Returns one dict per sequence: 'tokens' (the input list), 'logprobs' (len(tokens) - 1 floats: the first token
  has no prediction) and 'total' (their sum; 0.0 for a single token). Sequences may not exceed n_ctx tokens.
  """
  params = unboxed_params(params)
  for i, tokens in enumerate(token_lists):
    if not 0 < len(tokens) <= cfg.n_ctx:
      raise ValueError(f"sequence {i} has {len(tokens)} tokens; score needs 1..n_ctx={cfg.n_ctx}")
    if min(tokens) < 0 or max(tokens) >= cfg.vocab_size:
      raise ValueError(f"sequence {i} has token ids outside [0, {cfg.vocab_size})")
  results = []
  for start in range(0, len(token_lists), batch_size):
    chunk = [list(t) for t in token_lists[start:start + batch_size]]
    width = min(-(-max(len(t) for t in chunk) // SCORE_BUCKET) * SCORE_BUCKET, cfg.n_ctx)
    width = max(width, 2)
    tokens = np.zeros((len(chunk), width), np.int32)
    for row, t in enumerate(chunk):
      tokens[row, :len(t)] = t
    logprobs = np.asarray(_token_logprobs(params, tokens, cfg=cfg))
    for row, t in enumerate(chunk):
      values = logprobs[row, :len(t) - 1].astype(np.float64)
      results.append({"tokens": t, "logprobs": values.tolist(), "total": float(values.sum())})
  return results
