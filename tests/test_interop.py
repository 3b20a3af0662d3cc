"""Hugging Face GPT-2 interop: import / export against transformers' own GPT2LMHeadModel (random tiny weights).

Tolerance: our float32 logits vs HF's float32 logits, atol 1e-4. Import then export is exact (bitwise).
"""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch the network

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file, save_file  # noqa: E402  (transformers brings safetensors)

from gpt3_jax import convert  # noqa: E402
from gpt3_jax.interop import hf_gpt2  # noqa: E402
from gpt3_jax.model.config import ModelConfig  # noqa: E402
from gpt3_jax.model.transformer import GPT  # noqa: E402

ATOL = 1e-4
IDS = np.random.default_rng(0).integers(0, 300, (2, 24))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A random-weight GPT-2 (vocab 300, padded to 384 on our side) saved with save_pretrained."""
  torch.manual_seed(0)
  config = transformers.GPT2Config(vocab_size=300, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                   bos_token_id=0, eos_token_id=0)
  model = transformers.GPT2LMHeadModel(config)
  with torch.no_grad():  # non-zero biases and LayerNorm affine params, so every mapping is exercised
    for name, p in model.named_parameters():
      if name.endswith("bias") or "ln_" in name:
        p.add_(0.1 * torch.randn_like(p))
  path = str(tmp_path_factory.mktemp("hf_gpt2"))
  model.save_pretrained(path)
  return path


def hf_logits(path_or_model, ids):
  model = path_or_model
  if isinstance(model, str):
    model = transformers.GPT2LMHeadModel.from_pretrained(model)
  model.eval()
  with torch.no_grad():
    return model(torch.as_tensor(ids)).logits.numpy()


def our_logits(cfg, params, ids):
  return np.asarray(jax.jit(GPT(cfg).apply)({"params": params}, jnp.asarray(ids)))[..., :cfg.vocab_size]


@pytest.fixture(scope="module")
def imported(hf_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("workdir"))
  convert.import_hf(hf_dir, workdir)
  return workdir


def test_import_matches_hf_logits(hf_dir, imported):
  cfg, params = convert.load_workdir(imported)
  assert cfg.padded_vocab_size == 384 and params["wte"].shape == (384, 32)
  assert not params["wte"][300:].any()  # padding rows are zeros
  np.testing.assert_allclose(our_logits(cfg, params, IDS), hf_logits(hf_dir, IDS), atol=ATOL, rtol=0)


def test_import_then_export_is_exact(hf_dir, imported, tmp_path):
  convert.export_hf(imported, str(tmp_path))
  original = load_file(os.path.join(hf_dir, "model.safetensors"))
  exported = load_file(os.path.join(tmp_path, "model.safetensors"))
  original.pop("lm_head.weight", None)  # tied to wte
  assert sorted(exported) == sorted(original)
  for name, value in original.items():
    assert exported[name].dtype == value.dtype and exported[name].shape == value.shape, name
    np.testing.assert_array_equal(exported[name], value, err_msg=name)
  # unscanned params map the same way
  cfg, params = hf_gpt2.params_from_hf(original, transformers.GPT2Config.from_pretrained(hf_dir).to_dict(),
                                       scan_layers=False)
  again, _ = hf_gpt2.params_to_hf(cfg, params)
  for name, value in original.items():
    np.testing.assert_array_equal(again[name], value, err_msg=name)


def test_export_of_our_model_loads_in_transformers(tmp_path):
  """Our own random params (padding rows non-zero: export drops them) -> safetensors -> from_pretrained."""
  cfg = ModelConfig(vocab_size=300, n_ctx=32, d_model=32, n_layers=3, n_heads=2, d_head=16, d_ff=48)
  shapes = jax.eval_shape(GPT(cfg).init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda s: rng.normal(0, 0.2, s.value.shape).astype(np.float32), shapes,
                        is_leaf=lambda x: hasattr(x, "value"))
  state_dict, hf_config = hf_gpt2.params_to_hf(cfg, params)
  save_file(state_dict, os.path.join(tmp_path, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(tmp_path, "config.json"), "w") as f:
    json.dump(hf_config, f)
  model, info = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path), output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
  np.testing.assert_allclose(hf_logits(model, IDS), our_logits(cfg, params, IDS), atol=ATOL, rtol=0)


@pytest.mark.parametrize("changes,message", [
    ({"attention_pattern": "alternating"}, "only dense attention"),
    ({"d_head": 4}, "needs them equal"),
])
def test_unsupported_models_are_refused(changes, message):
  cfg = ModelConfig(vocab_size=300, n_ctx=32, d_model=32, n_layers=2, n_heads=4, d_head=8).replace(**changes)
  with pytest.raises(ValueError, match=message):
    hf_gpt2.params_to_hf(cfg, {})
  with pytest.raises(ValueError, match="activation_function"):
    hf_gpt2.config_from_hf({"activation_function": "relu", "n_embd": 32, "n_head": 4})


def test_export_of_a_training_run(tiny_text_dir, tiny_data_dir, tmp_path):
  """`--to_hf` reads a training run's newest checkpoint: the exported model gives our logits in transformers."""
  import tiny_configs as tc
  from gpt3_jax.training import trainer
  dense = tc.MODEL.replace(attention_pattern="dense")
  workdir = str(tmp_path / "run")
  trainer.train(dense, tc.data(tiny_text_dir, tiny_data_dir), tc.OPTIMIZER, tc.MESH, tc.train(train_steps=2), workdir)
  convert.export_hf(workdir, str(tmp_path / "hf"))
  cfg, params = convert.load_workdir(workdir)
  ids = np.array([[1, 5, 17, 200, 3, 9, 44, 2]])
  np.testing.assert_allclose(our_logits(cfg, params, ids), hf_logits(str(tmp_path / "hf"), ids), atol=ATOL, rtol=0)
