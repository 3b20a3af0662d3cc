"""Attention against a NumPy reference, the local band's exact reach, causality of the whole model, init scale.

Tolerances: float32 attention vs the NumPy (float64) reference: atol 1e-5, rtol 1e-5. Band / causality checks are
exact (bit-identical), since masked entries never enter the computation's values.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt3_jax.model import attention
from gpt3_jax.model.config import ATTENTION_IMPLS, ModelConfig
from gpt3_jax.model.transformer import GPT

ATOL = 1e-5


def available_impls():
  impls = []
  for impl in ATTENTION_IMPLS:
    try:
      attention.check_attention_impl(impl)
      impls.append(impl)
    except ValueError:
      pass
  return impls


def numpy_attention(q, k, v, window):
  """Masked softmax attention in float64: query i sees key j iff 0 <= i - j (< window)."""
  q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
  t = q.shape[1]
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  delta = np.arange(t)[:, None] - np.arange(t)[None, :]
  mask = (delta >= 0) & (delta < (window if window is not None else t + 1))
  logits = np.where(mask, logits, -np.inf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", probs, v)


def random_params(cfg, seed=0):
  """Parameters with GPT's shapes, drawn with NumPy (fast; jitted Flax init takes seconds on CPU)."""
  shapes = jax.eval_shape(GPT(cfg).init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
  rng = np.random.default_rng(seed)
  fill = lambda s: jnp.asarray(rng.normal(0.0, 0.02, s.shape).astype(np.float32))
  params = jax.tree.map(fill, nn.meta.unbox(shapes))
  return jax.tree_util.tree_map_with_path(
      lambda path, x: x + 1.0 if path[-1].key == "scale" else x, params)  # LayerNorm scales near 1


def random_qkv(seed=0, b=2, t=16, h=3, d=8):
  rng = np.random.default_rng(seed)
  return tuple(rng.standard_normal((b, t, h, d)).astype(np.float32) for _ in range(3))


@pytest.mark.parametrize("impl", available_impls())
@pytest.mark.parametrize("window", [None, 1, 3, 8, 16, 100])
def test_attention_matches_numpy_reference(impl, window):
  q, k, v = random_qkv()
  got = attention.attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), window=window, impl=impl)
  np.testing.assert_allclose(np.asarray(got), numpy_attention(q, k, v, window), atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("block", [4, 8, 5, 2])  # 5 does not divide T=16: one masked block; 2: 8 blocks
@pytest.mark.parametrize("window", [None, 1, 3, 4, 6, 9, 100])
def test_block_sparse_attention_matches_numpy_reference(block, window):
  """Query blocks that skip the key blocks outside their band: same values as the float64 reference, and the
  same gradients as the one-block masked form (masked keys contribute exactly zero to both)."""
  q, k, v = (jnp.asarray(t) for t in random_qkv(seed=3))
  got = attention.xla_attention(q, k, v, window=window, block=block)
  np.testing.assert_allclose(np.asarray(got), numpy_attention(q, k, v, window), atol=ATOL, rtol=ATOL)
  cotangent = jnp.asarray(random_qkv(seed=4)[0])
  grads = [jax.grad(lambda *qkv: jnp.sum(attention.xla_attention(*qkv, window=window, block=b) * cotangent),
                    argnums=(0, 1, 2))(q, k, v) for b in (block, 0)]
  for blocked, dense in zip(*grads):
    np.testing.assert_allclose(np.asarray(blocked), np.asarray(dense), atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("t, block", [(64, 8), (128, 8), (96, 8)])  # 8 and 16 blocks by halves; 12 per block
def test_dense_attention_by_halves_matches_numpy_reference(t, block, monkeypatch):
  """A dense layer of 2^k >= 8 query blocks runs as log2(n) + 1 batched products (_causal_by_halves): values as
  the float64 reference, gradients as the one-block form; 12 blocks (not a power of two) take the per-block
  path."""
  calls = []
  by_halves = attention._causal_by_halves
  monkeypatch.setattr(attention, "_causal_by_halves", lambda *a: calls.append(a[3]) or by_halves(*a))
  q, k, v = (jnp.asarray(x) for x in random_qkv(seed=5, t=t))
  got = attention.xla_attention(q, k, v, window=None, block=block)
  np.testing.assert_allclose(np.asarray(got), numpy_attention(q, k, v, None), atol=ATOL, rtol=ATOL)
  assert calls == ([block] if t // block in (8, 16) else [])
  cotangent = jnp.asarray(random_qkv(seed=6, t=t)[0])
  grads = [jax.grad(lambda *qkv: jnp.sum(attention.xla_attention(*qkv, window=None, block=b) * cotangent),
                    argnums=(0, 1, 2))(q, k, v) for b in (block, 0)]
  for blocked, dense in zip(*grads):
    np.testing.assert_allclose(np.asarray(blocked), np.asarray(dense), atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("window, expect", [(None, (0, 0, 0, 0)), (1, (0, 4, 8, 12)), (4, (0, 0, 4, 8)),
                                            (5, (0, 0, 4, 8)), (6, (0, 0, 0, 4)), (100, (0, 0, 0, 0))])
def test_key_block_start_is_the_first_block_the_band_reaches(window, expect):
  """Block 4: query block [s, s + 4) first sees key s - window + 1, rounded down to a block start."""
  assert tuple(attention.key_block_start(s, window, 4) for s in (0, 4, 8, 12)) == expect


def test_block_sparse_work_follows_the_band():
  """The attention's matmul FLOPs, counted from its jaxpr: with blocks, a local layer's work grows with the
  window, not T, and a dense causal layer does (n + 1) / 2n of the one-block products (n = 8 blocks)."""
  q = k = v = jnp.zeros((1, 256, 2, 16))

  def matmul_flops(window, block):
    jaxpr = jax.make_jaxpr(lambda q, k, v: attention.xla_attention(q, k, v, window=window, block=block))(q, k, v)
    total = 0
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general":
        (contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        total += 2 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[i] for i in contract])
    return total

  one_block = matmul_flops(None, 0)
  assert one_block == 2 * 2 * 256 * 256 * 16 * 2  # QK and PV for 2 heads
  assert matmul_flops(None, 32) / one_block == 9 / 16
  # 2 key blocks per query block, the first's left one padding (one product for all 8 blocks, not 2)
  assert matmul_flops(32, 32) / one_block == 16 / 64
  # keys s - 99 .. s + 31 of a query block starting at s span 5 key blocks, padded on the left near key 0
  assert matmul_flops(100, 32) / one_block == 5 * 8 / 64
  # below HALVES_MIN_BLOCKS blocks, those whose band starts at key 0 keep their exact ranges: 1 + 2 * 3 of 4 * 4
  assert matmul_flops(64, 64) / one_block == 7 / 16
  for window, block in [(None, 0), (None, 32), (32, 32), (100, 32), (7, 64), (None, 100), (300, 32), (64, 64)]:
    assert matmul_flops(window, block) == 2 * 2 * 2 * 16 * attention.scores_computed(256, window, block)
  alternating = ModelConfig(n_ctx=256, n_layers=4, attention_pattern="alternating", local_window=32,
                            attention_block=32)
  assert attention.model_pairs_computed(alternating, 256) == 2 * (36 + 16) * 32 * 32  # 2 dense + 2 local layers


def test_per_row_positions_match_numpy_reference():
  """Explicit per-row positions (the decoding path) give the same attention as the default positions."""
  q, k, v = random_qkv(seed=1)
  pos = np.broadcast_to(np.arange(16), (2, 16))
  got = attention.xla_attention(q, k, v, window=5, q_positions=pos, k_positions=pos)
  np.testing.assert_allclose(np.asarray(got), numpy_attention(q, k, v, 5), atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("window", [16, 17, 1000])
def test_band_at_least_sequence_length_equals_dense(window):
  q, k, v = (jnp.asarray(t) for t in random_qkv(seed=2))
  np.testing.assert_array_equal(np.asarray(attention.xla_attention(q, k, v, window=window)),
                                np.asarray(attention.xla_attention(q, k, v, window=None)))


def test_alternating_model_with_full_band_equals_dense_model():
  """alternating with local_window >= n_ctx is the dense model with the (dense, local) pairs interleaved."""
  alt_cfg = ModelConfig(vocab_size=64, n_ctx=16, d_model=32, n_layers=4, n_heads=4, d_head=8,
                        attention_pattern="alternating", local_window=16)
  dense_cfg = alt_cfg.replace(attention_pattern="dense")
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 64)
  alt = random_params(alt_cfg)
  pairs = alt["layers"]
  interleave = lambda a, b: jnp.stack([a, b], axis=1).reshape((-1,) + a.shape[1:])
  dense = dict(alt, layers={"block": jax.tree.map(interleave, pairs["dense"], pairs["local"])})
  alt_logits = jax.jit(GPT(alt_cfg).apply)({"params": alt}, tokens)
  dense_logits = jax.jit(GPT(dense_cfg).apply)({"params": dense}, tokens)
  np.testing.assert_allclose(np.asarray(alt_logits), np.asarray(dense_logits), atol=ATOL, rtol=0)


def test_block_sparse_model_equals_one_block_model():
  """The whole alternating model with 4-token query blocks gives the one-block model's logits."""
  cfg = ModelConfig(vocab_size=64, n_ctx=16, d_model=32, n_layers=2, n_heads=4, d_head=8,
                    attention_pattern="alternating", local_window=5, attention_block=4)
  params = random_params(cfg, seed=3)
  tokens = jax.random.randint(jax.random.key(2), (2, 16), 0, 64)
  blocked = jax.jit(GPT(cfg).apply)({"params": params}, tokens)
  one_block = jax.jit(GPT(cfg.replace(attention_block=0)).apply)({"params": params}, tokens)
  np.testing.assert_allclose(np.asarray(blocked), np.asarray(one_block), atol=ATOL, rtol=0)


@pytest.mark.parametrize("window", [1, 4])
def test_key_outside_band_has_no_influence(window):
  """Perturbing a local layer's input at position i - window leaves the output at i bit-identical."""
  cfg = ModelConfig(vocab_size=64, n_ctx=16, d_model=32, n_layers=2, n_heads=4, d_head=8)
  layer = attention.SelfAttention(cfg, window)
  x = jax.random.normal(jax.random.key(0), (1, 16, 32))
  shapes = jax.eval_shape(layer.init, jax.random.key(1), x)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.2, s.shape), jnp.float32), nn.meta.unbox(shapes))
  apply = jax.jit(layer.apply)
  i = 10
  base = np.asarray(apply(params, x))
  outside = np.asarray(apply(params, x.at[:, i - window].add(5.0)))
  inside = np.asarray(apply(params, x.at[:, i - window + 1].add(5.0)))
  np.testing.assert_array_equal(outside[:, i], base[:, i])
  assert np.abs(inside[:, i] - base[:, i]).max() > 1e-3  # the band's oldest key does matter


@pytest.mark.parametrize("pattern", ["dense", "alternating"])
def test_future_tokens_never_change_earlier_logits(pattern):
  cfg = ModelConfig(vocab_size=64, n_ctx=16, d_model=32, n_layers=2, n_heads=4, d_head=8,
                    attention_pattern=pattern, local_window=3)
  tokens = jax.random.randint(jax.random.key(1), (1, 16), 0, 64)
  params = {"params": random_params(cfg)}
  apply = jax.jit(GPT(cfg).apply)
  base = np.asarray(apply(params, tokens))
  for t in (5, 15):
    changed = np.asarray(apply(params, tokens.at[0, t].set((tokens[0, t] + 1) % 64)))
    np.testing.assert_array_equal(changed[:, :t], base[:, :t])
    assert np.abs(changed[:, t] - base[:, t]).max() > 1e-6


@pytest.mark.parametrize("impl,backend", [("cudnn", "gpu"), ("splash", "tpu")])
def test_unavailable_kernel_is_a_clear_error(impl, backend):
  if jax.default_backend() == backend:
    pytest.skip(f"{impl} is available on this {backend}")
  with pytest.raises(ValueError, match=f"attention_impl='{impl}' needs a {backend.upper()} backend"):
    attention.check_attention_impl(impl)


def test_cudnn_attention_refuses_float32_in_one_line():
  with pytest.raises(ValueError, match="attention_impl='cudnn' runs in bfloat16 or float16 only.*dtype='bfloat16'"):
    ModelConfig(attention_impl="cudnn", dtype="float32")
  assert ModelConfig(attention_impl="cudnn", dtype="bfloat16").dtype == "bfloat16"


def test_gpt2_init_scaling():
  """Weights ~ N(0, 0.02); residual output projections ~ N(0, 0.02 / sqrt(2 L)); biases 0, LN scale 1."""
  cfg = ModelConfig(vocab_size=512, n_ctx=64, d_model=64, n_layers=8, n_heads=4, d_head=16)
  params = nn.meta.unbox(jax.jit(GPT(cfg).init)(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"])
  block = params["layers"]["block"]
  out_std = 0.02 / np.sqrt(2 * cfg.n_layers)
  # sample sizes 32k-131k: the sample std is within ~1.5% of the true std at 4 sigma.
  for name, w, std in [("attention out", block["attention"]["out_kernel"], out_std),
                       ("mlp out", block["mlp"]["out_kernel"], out_std),
                       ("qkv", block["attention"]["qkv_kernel"], 0.02),
                       ("mlp in", block["mlp"]["in_kernel"], 0.02),
                       ("wte", params["wte"], 0.02)]:
    w = np.asarray(w)
    assert w.size >= 32768, name
    assert abs(w.std() / std - 1) < 0.03, (name, w.std(), std)
    assert abs(w.mean()) < 4 * std / np.sqrt(w.size), name
  assert not np.asarray(block["attention"]["out_bias"]).any()
  np.testing.assert_array_equal(np.asarray(block["ln_1"]["scale"]), 1.0)


def test_tied_embedding_logits():
  """logits = ln_f(h) @ wte.T on the real vocabulary; padded entries are -1e9."""
  cfg = ModelConfig(vocab_size=100, n_ctx=16, d_model=32, n_layers=2, n_heads=4, d_head=8)
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 100)
  params = random_params(cfg)
  logits, state = jax.jit(lambda p, t: GPT(cfg).apply(
      {"params": p}, t, capture_intermediates=True, mutable=["intermediates"]))(params, tokens)
  hidden = np.asarray(state["intermediates"]["ln_f"]["__call__"][0], np.float64)
  wte = np.asarray(params["wte"], np.float64)
  assert logits.shape == (2, 16, cfg.padded_vocab_size) and cfg.padded_vocab_size == 128
  np.testing.assert_allclose(np.asarray(logits)[..., :100], hidden @ wte[:100].T, atol=ATOL, rtol=ATOL)
  np.testing.assert_array_equal(np.asarray(logits)[..., 100:], -1e9)


def test_sequence_longer_than_position_table_is_an_error():
  import jax
  import jax.numpy as jnp
  from gpt3_jax.model.config import ModelConfig
  from gpt3_jax.model.transformer import GPT
  cfg = ModelConfig(vocab_size=64, n_ctx=8, d_model=16, n_layers=2, n_heads=2, d_head=8)
  with pytest.raises(ValueError, match="exceeds the position table n_ctx=8"):
    jax.eval_shape(lambda: GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 9), jnp.int32)))


def test_scan_unroll_keeps_params_and_logits():
  import jax
  import jax.numpy as jnp
  import numpy as np
  from gpt3_jax.model.config import ModelConfig
  from gpt3_jax.model.transformer import GPT
  cfg = ModelConfig(vocab_size=64, n_ctx=16, d_model=16, n_layers=4, n_heads=2, d_head=8,
                    attention_pattern="alternating", local_window=4)
  tokens = jnp.arange(32).reshape(2, 16) % 64
  params = GPT(cfg).init(jax.random.key(0), tokens)
  unrolled = cfg.replace(scan_unroll=4)
  assert jax.tree.map(jnp.shape, GPT(unrolled).init(jax.random.key(0), tokens)) == jax.tree.map(jnp.shape, params)
  np.testing.assert_allclose(GPT(unrolled).apply(params, tokens), GPT(cfg).apply(params, tokens), rtol=1e-6,
                             atol=1e-6)


@pytest.mark.parametrize("window", [None, 64])
def test_splash_kernel_in_interpreter_equals_reference(window):
  """The TPU path (Pallas splash attention, block-sparse over the causal band) run by the Pallas interpreter on
  CPU equals the float32 reference to 1e-5."""
  import jax
  import numpy as np
  from gpt3_jax.model import attention
  keys = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(key, (1, 256, 2, 128)) for key in keys)  # splash blocks: multiples of 128
  out = attention.splash_attention(q, k, v, window=window, interpret=True)
  np.testing.assert_allclose(out, attention.xla_attention(q, k, v, window=window), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scan", [True, False])
def test_recorded_attention_weights_match_numpy(scan):
  """attention_maps.attention_weights: layer 0's weights against NumPy from the parameters, every layer's rows
  sum to 1 inside its band and are 0 outside it, layers in depth order, and the logits are unchanged."""
  from gpt3_jax.inference.attention_maps import attention_weights
  from gpt3_jax.model.transformer import unboxed_params
  cfg = ModelConfig(vocab_size=64, n_ctx=16, d_model=32, n_layers=4, n_heads=2, d_head=16,
                    attention_pattern="alternating", local_window=4, scan_layers=scan, attention_block=8)
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 64)
  params = unboxed_params(GPT(cfg).init(jax.random.key(0), tokens))
  weights = attention_weights(cfg, params, tokens)
  assert weights.shape == (4, 2, 2, 16, 16)
  t = np.arange(16)
  for layer, window in enumerate(cfg.layer_windows):
    visible = np.asarray(attention.band_mask(t, t, window))
    np.testing.assert_allclose(weights[layer].sum(-1), 1.0, atol=1e-5)
    assert np.all(weights[layer][..., ~visible] == 0) and np.all(weights[layer][..., visible] > 0)

  # Layer 0 by hand: embeddings, ln_1, the query / key projections, a causal softmax.
  p = jax.tree.map(np.asarray, params)
  layer0 = jax.tree.map(lambda x: x[0], p["layers"]) if scan else p["layers_0"]
  attn, ln = layer0["dense"]["attention"], layer0["dense"]["ln_1"]
  x = p["wte"][np.asarray(tokens)] + p["wpe"][:16]
  x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + cfg.layer_norm_epsilon)
  x = x * ln["scale"] + ln["bias"]
  qkv = np.einsum("btd,dshk->btshk", x, attn["qkv_kernel"]) + attn["qkv_bias"]
  logits = np.einsum("bqhd,bkhd->bhqk", qkv[:, :, 0], qkv[:, :, 1]) / np.sqrt(cfg.d_head)
  logits = np.where(np.tril(np.ones((16, 16), bool)), logits, -np.inf)
  expect = np.exp(logits - logits.max(-1, keepdims=True))
  np.testing.assert_allclose(weights[0], expect / expect.sum(-1, keepdims=True), atol=2e-5)

  # Recording changes nothing the model computes.
  plain = GPT(cfg).apply({"params": params}, tokens)
  recorded, _ = GPT(cfg).apply({"params": params}, tokens, mutable=["intermediates"])
  np.testing.assert_array_equal(np.asarray(plain), np.asarray(recorded))


def test_initialization_never_calls_a_kernel_with_a_shape_it_cannot_take():
  """The splash kernel needs 128-token query blocks (and a TPU): the parameters' specs, shapes and values come from
  the portable path, identical to the xla model's."""
  from gpt3_jax.training import train_state
  cfg = ModelConfig(vocab_size=64, n_ctx=256, d_model=32, n_layers=2, n_heads=2, d_head=16,
                    attention_pattern="alternating", local_window=128)
  splash = cfg.replace(attention_impl="splash")
  assert train_state.param_logical_specs(splash) == train_state.param_logical_specs(cfg)
  a, b = (train_state.host_params(c, seed=0) for c in (splash, cfg))
  assert jax.tree.all(jax.tree.map(np.array_equal, a, b))


_SPLASH_ON_A_MESH = r"""
import json, jax, jax.numpy as jnp, numpy as np
from gpt3_jax.model import attention
from gpt3_jax.parallel import mesh as mesh_lib
mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(shape=(2, 2, 2)))
q, k, v = (jax.random.normal(key, (4, 256, 4, 128)) for key in jax.random.split(jax.random.key(0), 3))
rows = []
for window in (None, 64):
  loss = lambda fn: lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))
  splash = lambda q, k, v: attention.splash_attention(q, k, v, window=window, interpret=True)
  xla = lambda q, k, v: attention.xla_attention(q, k, v, window=window)
  with mesh_lib.activate(mesh):
    out = jax.jit(splash)(q, k, v)
    grads = jax.jit(jax.grad(loss(splash), argnums=(0, 1, 2)))(q, k, v)
  ref, ref_grads = xla(q, k, v), jax.grad(loss(xla), argnums=(0, 1, 2))(q, k, v)
  rows.append({"spec": str(tuple(out.sharding.spec)), "out": float(jnp.max(jnp.abs(out - ref))),
               "grads": max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(grads, ref_grads))})
print(json.dumps(rows))
"""


def test_splash_runs_per_shard_on_a_mesh_and_equals_the_reference():
  """On a (2, 2, 2) mesh of 8 CPU devices splash attention runs under shard_map (rows over data x fsdp, heads
  over tensor, as the rules table splits activations), in the Pallas interpreter; its output and gradients equal
  the xla reference for dense and local layers. (That the TPU compiler accepts it on 4 chips: test_planner.)"""
  import json
  import os
  import subprocess
  import sys
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
  out = subprocess.run([sys.executable, "-c", _SPLASH_ON_A_MESH], capture_output=True, text=True, env=env,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  for row in json.loads(out.stdout.strip().splitlines()[-1]):
    assert row["spec"] == "(('data', 'fsdp'), None, 'tensor')", row
    assert row["out"] < 1e-5 and row["grads"] < 1e-4, row
