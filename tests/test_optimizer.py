"""The paper's optimizer recipe: schedule values at chosen token counts, decay mask, clipping."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gpt3_jax.training import optimizer as opt

CFG = opt.OptimizerConfig(peak_learning_rate=6e-4, warmup_tokens=375e6, decay_tokens=260e9)


@pytest.mark.parametrize("tokens, expected", [
    (0.0, 0.0),
    (187.5e6, 3e-4),  # half-way through warmup
    (375e6, 6e-4),  # peak
    # cosine half-way between the end of warmup and 260B tokens: floor + (peak - floor) / 2
    (375e6 + (260e9 - 375e6) / 2, 6e-5 + (6e-4 - 6e-5) / 2),
    (260e9, 6e-5),  # 10% of peak
    (300e9, 6e-5),  # flat until the end
])
def test_schedule_values(tokens, expected):
  assert float(opt.learning_rate_at_tokens(CFG, tokens)) == pytest.approx(expected, rel=1e-5, abs=1e-12)


def test_decay_mask_only_kernels():
  params = {"wte": 1, "wpe": 1, "ln_f": {"scale": 1, "bias": 1},
            "layers": {"block": {"attention": {"qkv_kernel": 1, "qkv_bias": 1}, "mlp": {"in_kernel": 1}}}}
  mask = opt.decay_mask(params)
  assert mask["layers"]["block"]["attention"]["qkv_kernel"] and mask["layers"]["block"]["mlp"]["in_kernel"]
  assert not any([mask["wte"], mask["wpe"], mask["ln_f"]["scale"], mask["ln_f"]["bias"],
                  mask["layers"]["block"]["attention"]["qkv_bias"]])


def test_one_step_matches_hand_computed_adamw_with_clipping():
  """First AdamW step: update = -lr * (g_clipped / (|g_clipped| + eps) + wd * p) for kernels, no wd for biases."""
  cfg = opt.OptimizerConfig(peak_learning_rate=1e-2, warmup_tokens=0, decay_tokens=1e9, grad_clip_norm=1.0)
  tx = opt.make_optimizer(cfg)
  params = {"a_kernel": jnp.array([1.0, -2.0]), "b_bias": jnp.array([0.5])}
  grads = {"a_kernel": jnp.array([3.0, 0.0]), "b_bias": jnp.array([4.0])}  # global norm 5 -> scaled by 1/5
  lr = float(opt.learning_rate_at_tokens(cfg, 0))
  assert lr == pytest.approx(1e-2)
  direction, _ = tx.update(grads, tx.init(params), params)
  updates = opt.apply_learning_rate(direction, lr)
  g = {k: np.asarray(v) / 5.0 for k, v in grads.items()}
  # Adam's first step with bias correction: m_hat = g, v_hat = g^2 -> g / (|g| + eps).
  expect_a = -lr * (g["a_kernel"] / (np.abs(g["a_kernel"]) + 1e-8) + 0.1 * np.array([1.0, -2.0]))
  expect_b = -lr * (g["b_bias"] / (np.abs(g["b_bias"]) + 1e-8))
  np.testing.assert_allclose(updates["a_kernel"], expect_a, rtol=1e-6)
  np.testing.assert_allclose(updates["b_bias"], expect_b, rtol=1e-6)
  assert math.isclose(float(optax.tree.norm(jax.tree.map(lambda x: x / 5.0, grads))), 1.0, rel_tol=1e-6)


def test_equals_optax_adamw():
  """Our lr-free chain + apply_learning_rate is optax's clip + adamw (masked decay), step after step."""
  cfg = opt.OptimizerConfig(grad_clip_norm=0.5)
  params = {"w_kernel": jnp.arange(6.0).reshape(2, 3) / 7, "w_bias": jnp.ones(3)}
  reference = optax.chain(optax.clip_by_global_norm(0.5), optax.adamw(
      1e-3, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, mask=opt.decay_mask))
  ours = opt.make_optimizer(cfg)
  s_ref, s_ours = reference.init(params), ours.init(params)
  p_ref = p_ours = params
  for i in range(3):
    grads = jax.tree.map(lambda x: jnp.sin(x * (i + 1)), p_ref)
    u_ref, s_ref = reference.update(grads, s_ref, p_ref)
    u_ours, s_ours = ours.update(grads, s_ours, p_ours)
    p_ref = optax.apply_updates(p_ref, u_ref)
    p_ours = optax.apply_updates(p_ours, opt.apply_learning_rate(u_ours, 1e-3))
  for key in params:
    np.testing.assert_allclose(p_ours[key], p_ref[key], rtol=1e-6)


def test_decay_mask_on_the_real_model():
  """On the GPT parameter tree: exactly the four weight matrices of every block decay; embeddings, biases and
  LayerNorms do not. Counts: decayed = n_layers * (d*3a + a*d + d*f + f*d)."""
  import flax.linen as nn
  from gpt3_jax.model.config import ModelConfig
  from gpt3_jax.training import train_state
  cfg = ModelConfig(vocab_size=100, n_ctx=16, d_model=24, n_layers=4, n_heads=2, d_head=8,
                    attention_pattern="alternating", local_window=4)
  shapes = jax.eval_shape(lambda r: nn.unbox(train_state.init_params_fn(cfg)(r)), jax.random.key(0))
  mask = opt.decay_mask(shapes)
  decayed = {jax.tree_util.keystr(p) for p, m in jax.tree_util.tree_leaves_with_path(mask) if m}
  assert decayed == {f"['layers']['{kind}']['{sub}']['{name}']" for kind in ("dense", "local")
                     for sub, name in (("attention", "qkv_kernel"), ("attention", "out_kernel"),
                                       ("mlp", "in_kernel"), ("mlp", "out_kernel"))}
  sizes = [np.prod(x.shape) for x, m in zip(jax.tree.leaves(shapes), jax.tree.leaves(mask)) if m]
  d, a, f = 24, 16, 96
  assert sum(sizes) == 4 * (d * 3 * a + a * d + d * f + f * d)


@pytest.mark.parametrize("scale", [0.1, 3.0])  # global norm below and above the clip
def test_clip_with_precomputed_norm_equals_optax_clip(scale):
  """Our clip, computing the norm itself or given it, is optax.clip_by_global_norm bit for bit; a given norm is
  the one used (the train step passes the norm it already computed)."""
  grads = {"a": jnp.arange(6.0).reshape(2, 3) * scale, "b": jnp.array([-1.0, 2.0]) * scale}
  want, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
  clip = opt.clip_by_global_norm(1.0)
  for got, _ in (clip.update(grads, clip.init(grads)),
                 clip.update(grads, clip.init(grads), grad_norm=optax.tree.norm(grads))):
    for key in grads:
      np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]))
  told, _ = clip.update(grads, clip.init(grads), grad_norm=jnp.float32(100.0))
  np.testing.assert_allclose(np.asarray(told["a"]), np.asarray(grads["a"]) / 100.0, rtol=1e-6)
