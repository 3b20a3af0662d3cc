"""Autoregressive sampling: KV-cache decoding (`generate`) and a cache-free baseline (`generate_recompute`).

Both take a batch of prompts of different lengths and return only the new tokens of each prompt.

How rows of different lengths share one batch:
  generate: prompts are LEFT-padded to the longest prompt P; row b's tokens get positions 0..len_b-1 and its
    padding gets position -1, which the attention cache masks out (padding sees nothing, nothing sees padding).
    Every row then advances one cache slot per step, so all rows write the same slot (a shared cache index),
    while each row keeps its own positions: a row's output equals the output of that prompt alone. P and the
    number of steps are rounded up to a multiple of SHAPE_BUCKET so that similar calls share one compilation.
  generate_recompute: prompts are RIGHT-padded; each step reruns the whole model on the prefix (rounded up to a
    multiple of RECOMPUTE_BUCKET tokens, so only a few shapes compile) and reads the logits at each row's last
    real token. Causality makes the padding after it irrelevant.

Stopping: a row stops after max_new_tokens new tokens, after emitting eot_id (the eot token IS included as the
last returned token), or when prompt + new tokens reach n_ctx (never beyond the context).

Randomness: the token of row b at step s is drawn with key fold_in(fold_in(key(seed), s), b), in both functions,
so the same seed gives the same samples, and the two functions agree whenever their logits do. temperature == 0
is greedy (argmax; top_k / top_p are then ignored). Padded vocabulary entries are never chosen.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gpt3_jax.model.config import ModelConfig
from gpt3_jax.model.transformer import GPT, init_cache, unboxed_params

RECOMPUTE_BUCKET = 32
SHAPE_BUCKET = 8  # generate pads the prompt length and the step count up to a multiple: fewer recompilations


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """Sets every logit outside the top-k / nucleus (top-p) set to -inf; a pure function of [..., V] logits.

  top_k > 0 keeps the k largest logits (ties with the k-th are kept too); then top_p < 1 keeps the smallest
  set of the most likely remaining tokens whose probability reaches top_p (the most likely token always
  stays). top_k = 0 and top_p = 1 disable the filters.
  """
  if top_k < 0 or not 0.0 < top_p <= 1.0:
    raise ValueError(f"need top_k >= 0 and 0 < top_p <= 1, got top_k={top_k}, top_p={top_p}")
  if top_k > 0 and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits >= kth, logits, -jnp.inf)
  if top_p < 1.0:
    desc = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(desc, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    threshold = jnp.min(jnp.where(mass_before < top_p, desc, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits >= threshold, logits, -jnp.inf)
  return logits


def _sample(logits, key, *, vocab_size: int, greedy: bool, top_k: int, top_p: float, temperature):
  """Next token per row from logits [B, V_padded] (upcast to float32); row b draws with fold_in(key, b)."""
  logits = logits.astype(jnp.float32)
  real = jnp.arange(logits.shape[-1]) < vocab_size
  if greedy:
    return jnp.argmax(jnp.where(real, logits, -jnp.inf), axis=-1).astype(jnp.int32)
  logits = jnp.where(real, logits / temperature, -jnp.inf)  # mask after scaling: a huge temperature can't revive
  logits = filter_logits(logits, top_k, top_p)
  keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(logits.shape[0]))
  return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)


def _prepare(cfg: ModelConfig, params, prompts: Sequence[Sequence[int]], max_new_tokens: int,
             temperature: float, top_k: int, top_p: float, eot_id: Optional[int]):
  """Validates the arguments; returns unboxed params, prompt lengths and per-row token budgets."""
  if not prompts:
    raise ValueError("prompts is empty")
  for i, p in enumerate(prompts):
    if len(p) == 0:
      raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
    if len(p) > cfg.n_ctx:
      raise ValueError(f"prompt {i} has {len(p)} tokens, more than n_ctx={cfg.n_ctx}")
    if min(p) < 0 or max(p) >= cfg.vocab_size:
      raise ValueError(f"prompt {i} has token ids outside [0, {cfg.vocab_size})")
  if max_new_tokens < 0 or temperature < 0:
    raise ValueError(f"need max_new_tokens >= 0 and temperature >= 0, got {max_new_tokens}, {temperature}")
  if top_k < 0 or not 0.0 < top_p <= 1.0:
    raise ValueError(f"need top_k >= 0 and 0 < top_p <= 1, got top_k={top_k}, top_p={top_p}")
  if eot_id is not None and not 0 <= eot_id < cfg.vocab_size:
    raise ValueError(f"eot_id={eot_id} is outside [0, {cfg.vocab_size})")
  lengths = np.array([len(p) for p in prompts], np.int32)
  budgets = np.minimum(max_new_tokens, cfg.n_ctx - lengths).astype(np.int32)
  return unboxed_params(params), lengths, budgets


def _trim(out: np.ndarray, budgets: np.ndarray, eot_id: Optional[int]) -> list[list[int]]:
  """Cuts each row at its budget and just after its first eot."""
  result = []
  for row, budget in zip(out.tolist(), budgets.tolist()):
    row = row[:budget]
    if eot_id is not None and eot_id in row:
      row = row[:row.index(eot_id) + 1]
    result.append(row)
  return result


@functools.partial(jax.jit, static_argnames=("cfg", "steps", "greedy", "top_k", "top_p"))
def _generate_cached(params, tokens, lengths, budgets, key, temperature, eot, *, cfg: ModelConfig, steps: int,
                     greedy: bool, top_k: int, top_p: float):
  """Prefill the left-padded prompts [B, P], then one token per step in a while loop -> tokens [B, steps]."""
  batch, prompt_len = tokens.shape
  model = GPT(cfg, decode=True)
  sample = functools.partial(_sample, vocab_size=cfg.vocab_size, greedy=greedy, top_k=top_k, top_p=top_p,
                             temperature=temperature)
  positions = jnp.arange(prompt_len)[None] - (prompt_len - lengths)[:, None]  # padding: negative
  cache = init_cache(cfg, batch, prompt_len + steps - 1)
  logits, state = model.apply({"params": params, "cache": cache}, tokens, positions, last_only=True,
                              mutable=["cache"])
  first = sample(logits[:, 0], jax.random.fold_in(key, 0))
  out = jnp.zeros((batch, steps), jnp.int32).at[:, 0].set(first)
  done = (first == eot) | (budgets <= 1)

  def cond(carry):
    step, _, _, done = carry
    return (step < steps) & ~jnp.all(done)

  def body(carry):
    step, cache, out, done = carry
    # Feed the previous token at position len_b + step - 1; finished rows are clamped inside the context.
    pos = jnp.minimum(lengths + step - 1, cfg.n_ctx - 1)[:, None]
    logits, state = model.apply({"params": params, "cache": cache}, out[:, step - 1][:, None], pos,
                                mutable=["cache"])
    tok = sample(logits[:, 0], jax.random.fold_in(key, step))
    out = out.at[:, step].set(tok)
    done = done | (tok == eot) | (step + 1 >= budgets)
    return step + 1, state["cache"], out, done

  _, _, out, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), state["cache"], out, done))
  return out


def generate(cfg: ModelConfig, params, prompts: list[list[int]], *, max_new_tokens: int,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, eot_id: Optional[int] = None,
             seed: int = 0) -> list[list[int]]:
  """Samples continuations with the KV cache; returns the new tokens of each prompt (see module docstring).

  params: the model's 'params' tree (boxed or unboxed, on any devices / shardings).
  """
  params, lengths, budgets = _prepare(cfg, params, prompts, max_new_tokens, temperature, top_k, top_p, eot_id)
  steps = int(budgets.max())
  if steps == 0:
    return [[] for _ in prompts]
  bucket = lambda n: -(-n // SHAPE_BUCKET) * SHAPE_BUCKET
  steps, prompt_len = bucket(steps), bucket(int(lengths.max()))
  tokens = np.zeros((len(prompts), prompt_len), np.int32)
  for i, p in enumerate(prompts):
    tokens[i, prompt_len - len(p):] = p
  out = _generate_cached(params, tokens, lengths, budgets, jax.random.key(seed), jnp.float32(temperature or 1.0),
                         jnp.int32(-1 if eot_id is None else eot_id), cfg=cfg, steps=steps,
                         greedy=temperature == 0, top_k=top_k, top_p=float(top_p))
  return _trim(np.asarray(out), budgets, eot_id)


@functools.partial(jax.jit, static_argnames=("cfg", "greedy", "top_k", "top_p"))
def _recompute_step(params, tokens, last, key, temperature, *, cfg: ModelConfig, greedy: bool, top_k: int,
                    top_p: float):
  """Full forward pass over right-padded tokens [B, L]; samples from the logits at column last[b]."""
  def last_logits(model, tokens):
    hidden = jnp.take_along_axis(model.hidden(tokens), last[:, None, None], axis=1)
    return model.logits(hidden)[:, 0]

  logits = GPT(cfg).apply({"params": params}, tokens, method=last_logits)
  return _sample(logits, key, vocab_size=cfg.vocab_size, greedy=greedy, top_k=top_k, top_p=top_p,
                 temperature=temperature)


def generate_recompute(cfg: ModelConfig, params, prompts: list[list[int]], *, max_new_tokens: int,
                       temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                       eot_id: Optional[int] = None, seed: int = 0) -> list[list[int]]:
  """Same contract as `generate`, without a cache: every step recomputes the whole prefix (baseline, oracle)."""
  params, lengths, budgets = _prepare(cfg, params, prompts, max_new_tokens, temperature, top_k, top_p, eot_id)
  steps = int(budgets.max())
  key = jax.random.key(seed)
  buffer = np.zeros((len(prompts), int((lengths + budgets).max())), np.int32)
  for i, p in enumerate(prompts):
    buffer[i, :len(p)] = p
  out = np.zeros((len(prompts), steps), np.int32)
  current = lengths.copy()  # tokens so far per row; finished rows stop growing
  done = budgets <= 0
  for step in range(steps):
    if done.all():
      break
    width = min(-(-int(current.max()) // RECOMPUTE_BUCKET) * RECOMPUTE_BUCKET, buffer.shape[1])
    tok = np.asarray(_recompute_step(
        params, buffer[:, :width], current - 1, jax.random.fold_in(key, step), jnp.float32(temperature or 1.0),
        cfg=cfg, greedy=temperature == 0, top_k=top_k, top_p=float(top_p)))
    out[:, step] = tok
    done = done | (step + 1 >= budgets) | (tok == (-1 if eot_id is None else eot_id))
    active = ~done
    buffer[active, current[active]] = tok[active]
    current[active] += 1
  return _trim(out, budgets, eot_id)
