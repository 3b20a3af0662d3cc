"""Batched log-likelihoods of continuations given contexts: the one model computation every task needs.

A request is (context ids, continuation ids). The model reads the last n_ctx + 1 tokens of context +
continuation (the context is cut from the left when it is longer), and the result is the summed log-probability
of the continuation's tokens and whether greedy decoding would have produced exactly them. Requests are sorted
by length and padded to a multiple of BUCKET tokens, so a task compiles a few shapes, not one per example; the
batches run over a device mesh like training's (`Scorer`).
"""

from __future__ import annotations

import functools
from typing import List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from gpt3_jax.model.config import ModelConfig
from gpt3_jax.model.transformer import GPT, unboxed_params
from gpt3_jax.parallel import mesh as mesh_lib
from gpt3_jax.training import train_state as state_lib

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


def _logprobs_and_greedy(params, tokens, *, cfg: ModelConfig):
  """tokens [B, W] -> (log p(tokens[:, i] | tokens[:, :i]), tokens[:, i] == argmax) for i >= 1, [B, W - 1]."""
  logits = GPT(cfg).apply({"params": params}, tokens[:, :-1]).astype(jnp.float32)[..., :cfg.vocab_size]
  logprobs = jax.nn.log_softmax(logits, axis=-1)
  targets = tokens[:, 1:]
  return (jnp.take_along_axis(logprobs, targets[..., None], axis=-1)[..., 0],
          jnp.argmax(logprobs, axis=-1) == targets)


class Scorer:
  """Log-likelihoods over a mesh, like training: the parameters placed once by the rules table, each batch's rows
  split over data x fsdp, the results replicated to every process. Every process must pass the same requests (as
  `--mode=eval` and the in-training hook do: the tasks are read and prompted deterministically)."""

  def __init__(self, cfg: ModelConfig, params, *, mesh: Optional[Mesh] = None, batch_size: int = 16):
    self.cfg = cfg
    self.mesh = mesh if mesh is not None else mesh_lib.make_mesh(mesh_lib.MeshConfig())
    ways = mesh_lib.data_parallel_size(self.mesh)
    self.batch_size = -(-batch_size // ways) * ways  # a multiple of the batch's shards
    with mesh_lib.activate(self.mesh):
      self._shardings = state_lib.param_shardings(cfg, self.mesh)
    self.use(params)
    self._rows = mesh_lib.batch_sharding(self.mesh)
    self._step = jax.jit(functools.partial(_logprobs_and_greedy, cfg=cfg), in_shardings=(self._shardings, self._rows),
                         out_shardings=mesh_lib.replicated(self.mesh))

  def use(self, params) -> None:
    """Score with these parameters from now on (same shapes: the compiled steps are kept)."""
    # A training run's state is already in these shardings and is used as it is; a loaded checkpoint is placed.
    self.params = jax.tree.map(mesh_lib.place, unboxed_params(params), self._shardings)

  def _run(self, tokens: np.ndarray):
    with mesh_lib.activate(self.mesh):
      return jax.device_get(self._step(self.params, mesh_lib.place(tokens, self._rows)))

  def loglikelihoods(self, requests: Sequence[Tuple[Sequence[int], Sequence[int]]]) -> List[Tuple[float, bool]]:
    """(sum of the continuation's log-probs, greedy match) for each (context, continuation) request."""
    cfg, windows = self.cfg, []
    for i, (context, continuation) in enumerate(requests):
      if not 0 < len(continuation) <= cfg.n_ctx:
        raise ValueError(f"request {i}: a continuation of {len(continuation)} tokens; it needs 1..n_ctx={cfg.n_ctx}")
      if not context:
        raise ValueError(f"request {i}: an empty context (start it with the end-of-text token)")
      windows.append((list(context) + list(continuation))[-(cfg.n_ctx + 1):])
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i]))
    results: List[Tuple[float, bool]] = [None] * len(windows)  # type: ignore[list-item]
    for start in range(0, len(order), self.batch_size):
      chunk = order[start:start + self.batch_size]
      width = min(-(-len(windows[chunk[0]]) // BUCKET) * BUCKET, cfg.n_ctx + 1)
      tokens = np.zeros((self.batch_size, width), np.int32)  # a fixed batch: one compile per width
      for row, i in enumerate(chunk):
        tokens[row, :len(windows[i])] = windows[i]
      logprobs, greedy = self._run(tokens)
      for row, i in enumerate(chunk):
        n, end = len(requests[i][1]), len(windows[i]) - 1  # predictions of tokens 1..len-1 sit at 0..len-2
        results[i] = (float(np.sum(logprobs[row, end - n:end], dtype=np.float64)),
                      bool(np.all(greedy[row, end - n:end])))
    return results


def loglikelihoods(cfg: ModelConfig, params, requests: Sequence[Tuple[Sequence[int], Sequence[int]]], *,
                   batch_size: int = 16, mesh: Optional[Mesh] = None) -> List[Tuple[float, bool]]:
  """One-off scoring (`Scorer` keeps the placed parameters and compiled shapes across calls)."""
  return Scorer(cfg, params, mesh=mesh, batch_size=batch_size).loglikelihoods(requests)
