"""Every shipped gin config parses; the eight GPT-3 sizes reproduce Table D.1 of the paper within 1%."""

import glob
import json
import os
import subprocess
import sys

import pytest

from gpt3_jax import configs, planner
from gpt3_jax.model.config import ModelConfig, flops_per_token, pad_vocab, param_counts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Table D.1 (Brown et al. 2020), total parameters.
TABLE_D1 = {"small": 125e6, "medium": 356e6, "large": 760e6, "xl": 1320e6, "2.7b": 2650e6, "6.7b": 6660e6,
            "13b": 12850e6, "175b": 174600e6}
# Table 2.1 as printed: (n_layers, d_model, n_heads, d_head).
TABLE_21 = {"small": (12, 768, 12, 64), "medium": (24, 1024, 16, 64), "large": (24, 1536, 16, 96),
            "xl": (24, 2048, 24, 128), "2.7b": (32, 2560, 32, 80), "6.7b": (32, 4096, 32, 128),
            "13b": (40, 5140, 40, 128), "175b": (96, 12288, 96, 128)}


def model_of(name: str) -> ModelConfig:
  return configs.parse_and_build([f"gin_configs/models/{name}.gin"], []).model


@pytest.mark.parametrize("name", sorted(TABLE_D1))
def test_paper_sizes_match_table_d1(name):
  cfg = model_of(name)
  assert cfg.n_ctx == 2048 and cfg.vocab_size == 50257 and cfg.attention_pattern == "alternating"
  assert param_counts(cfg)["params"] == pytest.approx(TABLE_D1[name], rel=0.01)


@pytest.mark.parametrize("name", sorted(TABLE_21))
def test_paper_sizes_follow_table_21(name):
  """Layers and head width as printed; XL and 13B differ only where the printed row is inconsistent."""
  cfg = model_of(name)
  layers, d_model, heads, d_head = TABLE_21[name]
  assert (cfg.n_layers, cfg.d_head) == (layers, d_head)
  if name == "xl":  # printed 24 heads x 128 = 3072 != d_model; default 16 heads (attention width = d_model)
    assert (cfg.d_model, cfg.n_heads) == (2048, 16)
  elif name == "13b":  # printed d_model 5140 != 40 x 128; default 5120
    assert (cfg.d_model, cfg.n_heads) == (5120, 40)
  else:
    assert (cfg.d_model, cfg.n_heads) == (d_model, heads)


def test_printed_rows_are_usable_as_printed():
  """Attention width may differ from d_model: the printed XL / 13B rows build and count as expected."""
  xl = model_of("xl").replace(n_heads=24)
  d13 = model_of("13b").replace(d_model=5140)
  for cfg in (xl, d13):
    assert planner.count_abstract_params(cfg) == param_counts(cfg, padded=True)["params"]
  assert param_counts(d13)["params"] == pytest.approx(12_953e6, rel=0.002)  # REFERENCE.md: ~12,953M


def test_closed_form_counts_match_reference_formula():
  """12 d^2 + 13 d per layer plus embeddings and the final LayerNorm (REFERENCE.md) for the dense shapes."""
  for name, expected in [("small", 125.2e6), ("175b", 174_604.3e6)]:
    cfg = model_of(name)
    d = cfg.d_model
    formula = cfg.n_layers * (12 * d * d + 13 * d) + 50257 * d + 2048 * d + 2 * d
    assert param_counts(cfg)["params"] == formula
    assert formula == pytest.approx(expected, rel=1e-3)


def test_flops_per_token_palm_formula():
  cfg = model_of("small")
  n = param_counts(cfg)["non_embedding_params"] + cfg.vocab_size * cfg.d_model
  assert flops_per_token(cfg) == 6 * n + 12 * 12 * 12 * 64 * 2048
  # LoRA rank 8 on the 4 projections of 12 layers: A [in, 8] + B [8, out] each; the frozen base costs 4N.
  adapters = 12 * 8 * ((768 + 3 * 768) + (768 + 768) + (768 + 3072) + (3072 + 768))
  assert flops_per_token(cfg.replace(lora_rank=8)) == 4 * n + 6 * adapters + 12 * 12 * 12 * 64 * 2048


def test_pad_vocab():
  assert pad_vocab(50257) == 50304 and pad_vocab(512) == 512 and pad_vocab(513) == 640


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "gin_configs", "**", "*.gin"),
                                                   recursive=True)))
def test_every_shipped_gin_config_parses(path):
  bundle = configs.parse_and_build([os.path.relpath(path, REPO)], [])
  assert bundle.model.n_layers > 0


def test_plan_mode_json():
  out = subprocess.run([sys.executable, "-m", "gpt3_jax.main", "--mode=plan", "--json",
                        "--gin_file=gin_configs/models/175b.gin"], capture_output=True, text=True, cwd=REPO,
                       timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  report = json.loads(out.stdout.strip().splitlines()[-1])
  assert report["params"] == pytest.approx(174_600e6, rel=0.01)
  assert {"params", "non_embedding_params", "flops_per_token"} <= set(report)


@pytest.mark.parametrize("model", ["small", "175b"])
@pytest.mark.parametrize("data", ["gpt3_mixture", "nanogpt_tokens"])
def test_paper_models_combine_with_shipped_data_configs(model, data):
  """A paper-size model file with a shipped data file passes the training vocabulary check."""
  bundle = configs.parse_and_build([f"gin_configs/models/{model}.gin", f"gin_configs/data/{data}.gin"], [])
  bundle.check_vocab()
  assert bundle.model.padded_vocab_size == 50304
