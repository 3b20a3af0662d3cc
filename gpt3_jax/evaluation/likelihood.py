"""Batched log-likelihoods of continuations given contexts: the one model computation every task needs.

A request is (context ids, continuation ids). The model reads the last n_ctx + 1 tokens of context +
continuation (the context is cut from the left when it is longer), and the result is the summed log-probability
of the continuation's tokens and whether greedy decoding would have produced exactly them. Requests are sorted
by length and padded to a multiple of BUCKET tokens, so a task compiles a few shapes, not one per example.
"""

from __future__ import annotations

import functools
from typing import List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from gpt3_jax.model.config import ModelConfig
from gpt3_jax.model.transformer import GPT, unboxed_params

BUCKET = 64


def encode_pair(tokenizer, context: str, continuation: str, *, prefix_eot: bool) -> Tuple[List[int], List[int]]:
  """(context ids, continuation ids), split as lm-evaluation-harness's Hugging Face model splits them: the
  context's trailing whitespace moves to the continuation, the whole text is encoded once and the continuation
  is what follows the context's own encoding (a merge across the boundary never leaves it empty), and an empty
  context is the end-of-text token. `prefix_eot`: start every context with end-of-text, as a document starts in
  our packed training stream."""
  spaces = len(context) - len(context.rstrip())
  if spaces:
    context, continuation = context[:-spaces], context[-spaces:] + continuation
  if not context:
    return [tokenizer.eot_id], tokenizer.encode(continuation)
  whole, head = tokenizer.encode(context + continuation), tokenizer.encode(context)
  if whole[:len(head)] != head or len(whole) == len(head):  # the boundary merged: encode the parts apart
    whole = head + tokenizer.encode(continuation)
  return ([tokenizer.eot_id] if prefix_eot else []) + head, whole[len(head):]


def rolling_windows(ids, n_ctx: int):
  """(context, continuation) pairs that predict ids[1:] once each: windows of n_ctx predictions; the last,
  shorter one takes as much earlier context as fits (as lm-evaluation-harness's rolling windows do)."""
  out = []
  for start in range(1, len(ids), n_ctx):
    continuation = ids[start:start + n_ctx]
    out.append((ids[max(0, start + len(continuation) - n_ctx - 1):start], continuation))
  return out


@functools.partial(jax.jit, static_argnames=("cfg",))
def _logprobs_and_greedy(params, tokens, *, cfg: ModelConfig):
  """tokens [B, W] -> (log p(tokens[:, i] | tokens[:, :i]), tokens[:, i] == argmax) for i >= 1, [B, W - 1]."""
  logits = GPT(cfg).apply({"params": params}, tokens[:, :-1]).astype(jnp.float32)[..., :cfg.vocab_size]
  logprobs = jax.nn.log_softmax(logits, axis=-1)
  targets = tokens[:, 1:]
  return (jnp.take_along_axis(logprobs, targets[..., None], axis=-1)[..., 0],
          jnp.argmax(logprobs, axis=-1) == targets)


def loglikelihoods(cfg: ModelConfig, params, requests: Sequence[Tuple[Sequence[int], Sequence[int]]], *,
                   batch_size: int = 16) -> List[Tuple[float, bool]]:
  """(sum of the continuation's log-probs, greedy match) for each (context, continuation) request."""
  params = unboxed_params(params)
  windows = []
  for i, (context, continuation) in enumerate(requests):
    if not 0 < len(continuation) <= cfg.n_ctx:
      raise ValueError(f"request {i}: a continuation of {len(continuation)} tokens; it needs 1..n_ctx={cfg.n_ctx}")
    if not context:
      raise ValueError(f"request {i}: an empty context (start it with the end-of-text token)")
    windows.append((list(context) + list(continuation))[-(cfg.n_ctx + 1):])
  order = sorted(range(len(windows)), key=lambda i: -len(windows[i]))
  results: List[Tuple[float, bool]] = [None] * len(windows)  # type: ignore[list-item]
  for start in range(0, len(order), batch_size):
    chunk = order[start:start + batch_size]
    width = min(-(-len(windows[chunk[0]]) // BUCKET) * BUCKET, cfg.n_ctx + 1)
    tokens = np.zeros((batch_size, width), np.int32)  # a fixed batch: one compile per width
    for row, i in enumerate(chunk):
      tokens[row, :len(windows[i])] = windows[i]
    logprobs, greedy = jax.device_get(_logprobs_and_greedy(params, jnp.asarray(tokens), cfg=cfg))
    for row, i in enumerate(chunk):
      n, end = len(requests[i][1]), len(windows[i]) - 1  # predictions of tokens 1..len-1 sit at 0..len-2
      results[i] = (float(np.sum(logprobs[row, end - n:end], dtype=np.float64)),
                    bool(np.all(greedy[row, end - n:end])))
  return results
