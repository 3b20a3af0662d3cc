"""Hugging Face GPT-2 <-> gpt3_jax parameters, as NumPy arrays (no torch needed).

HF GPT-2 (GPT2LMHeadModel) stores Conv1D weights as [in, out]; c_attn [d, 3d] holds q | k | v, each split into
heads of d / n_head columns; c_proj [d, d] maps the concatenated heads back. Its GELU is "gelu_new" (tanh
approximation), LayerNorm eps 1e-5, attention scaled by 1/sqrt(d_head): all as in our model. Only dense models
with d_model == n_heads * d_head map onto GPT-2. Our wte is padded to a multiple of 128 rows: zeros on import,
dropped on export. The LM head is tied to wte (HF omits lm_head.weight when saving a tied model).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

import flax.linen as nn
import numpy as np

from gpt3_jax.model.config import ModelConfig

_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
_PREFIX = "transformer."


def config_from_hf(hf: Mapping[str, Any]) -> ModelConfig:
  """ModelConfig of a GPT-2 config.json dict; refuses options our model does not implement."""
  if hf.get("model_type", "gpt2") != "gpt2":
    raise ValueError(f"model_type={hf.get('model_type')!r}: only GPT-2 checkpoints can be imported")
  unsupported = [
      (hf.get("activation_function", "gelu_new") not in _GELU_TANH, "activation_function (need gelu_new)"),
      (not hf.get("scale_attn_weights", True), "scale_attn_weights=False"),
      (hf.get("scale_attn_by_inverse_layer_idx", False), "scale_attn_by_inverse_layer_idx=True"),
      (hf.get("add_cross_attention", False), "add_cross_attention=True"),
      (not hf.get("tie_word_embeddings", True), "untied word embeddings"),
  ]
  for bad, what in unsupported:
    if bad:
      raise ValueError(f"GPT-2 config uses {what}, which gpt3_jax does not implement")
  d, heads = hf["n_embd"], hf["n_head"]
  if d % heads:
    raise ValueError(f"GPT-2 config: n_embd={d} is not a multiple of n_head={heads}")
  return ModelConfig(vocab_size=hf["vocab_size"], n_ctx=hf["n_positions"], d_model=d, n_layers=hf["n_layer"],
                     n_heads=heads, d_head=d // heads, d_ff=hf.get("n_inner"),
                     layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
                     init_std=hf.get("initializer_range", 0.02))


def config_to_hf(cfg: ModelConfig, pad_token_id: Optional[int] = None) -> dict:
  """GPT-2 config.json dict of a dense ModelConfig (see `check_exportable`). A classifier (cfg.class_labels)
  is a GPT2ForSequenceClassification, which reads its head at each row's last token that is not `pad_token_id`
  (our rows pad with end-of-text after the text)."""
  check_exportable(cfg)
  if cfg.class_labels:
    if pad_token_id is None:
      raise ValueError("exporting a classifier needs its tokenizer's end-of-text id (the padding token); the "
                       "workdir has no tokenizer")
    labels = {"architectures": ["GPT2ForSequenceClassification"], "pad_token_id": int(pad_token_id),
              "id2label": dict(enumerate(cfg.class_labels)),
              "label2id": {name: i for i, name in enumerate(cfg.class_labels)}}
  else:
    labels = {}
  return {
      "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
      "vocab_size": cfg.vocab_size, "n_positions": cfg.n_ctx, "n_embd": cfg.d_model, "n_layer": cfg.n_layers,
      "n_head": cfg.n_heads, "n_inner": cfg.d_ff, "layer_norm_epsilon": cfg.layer_norm_epsilon,
      "initializer_range": cfg.init_std, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
      "reorder_and_upcast_attn": False, "tie_word_embeddings": True, "attn_pdrop": 0.0, "embd_pdrop": 0.0,
      "resid_pdrop": 0.0, "bos_token_id": None, "eos_token_id": None, "dtype": "float32", **labels,
  }


def check_exportable(cfg: ModelConfig) -> None:
  if cfg.attention_pattern != "dense":
    raise ValueError(f"attention_pattern={cfg.attention_pattern!r}: GPT-2 has only dense attention")
  if cfg.attn_width != cfg.d_model:
    raise ValueError(f"n_heads * d_head = {cfg.attn_width} != d_model = {cfg.d_model}: GPT-2 needs them equal")


def _layer_tree(params: Mapping[str, Any], i: int) -> dict:
  """Layer i's Block params as NumPy, from a scanned ('layers' stacked on axis 0) or unscanned tree."""
  if "layers" in params:
    return {k: {n: np.asarray(w[i]) for n, w in sub.items()} for k, sub in params["layers"]["block"].items()}
  block = params[f"layers_{i}"]["block"]
  return {k: {n: np.asarray(w) for n, w in sub.items()} for k, sub in block.items()}


def params_from_hf(state_dict: Mapping[str, np.ndarray], hf_config: Mapping[str, Any], *,
                   scan_layers: bool = True) -> Tuple[ModelConfig, dict]:
  """(ModelConfig, params) of a GPT-2 state dict (name -> NumPy array, with or without 'transformer.')."""
  cfg = config_from_hf(hf_config).replace(scan_layers=scan_layers)
  check_exportable(cfg)
  sd = {k[len(_PREFIX):] if k.startswith(_PREFIX) else k: np.asarray(v, np.float32)
        for k, v in state_dict.items()}
  if "lm_head.weight" in sd and not np.array_equal(sd["lm_head.weight"], sd["wte.weight"]):
    raise ValueError("lm_head.weight differs from wte.weight: untied GPT-2 heads are not supported")
  d, h, k = cfg.d_model, cfg.n_heads, cfg.d_head
  ln = lambda name: {"scale": sd[f"{name}.weight"], "bias": sd[f"{name}.bias"]}
  layers = []
  for i in range(cfg.n_layers):
    p = f"h.{i}"
    layers.append({
        "ln_1": ln(f"{p}.ln_1"),
        "attention": {
            "qkv_kernel": sd[f"{p}.attn.c_attn.weight"].reshape(d, 3, h, k),
            "qkv_bias": sd[f"{p}.attn.c_attn.bias"].reshape(3, h, k),
            "out_kernel": sd[f"{p}.attn.c_proj.weight"].reshape(h, k, d),
            "out_bias": sd[f"{p}.attn.c_proj.bias"],
        },
        "ln_2": ln(f"{p}.ln_2"),
        "mlp": {
            "in_kernel": sd[f"{p}.mlp.c_fc.weight"], "in_bias": sd[f"{p}.mlp.c_fc.bias"],
            "out_kernel": sd[f"{p}.mlp.c_proj.weight"], "out_bias": sd[f"{p}.mlp.c_proj.bias"],
        },
    })
  wte = np.zeros((cfg.padded_vocab_size, d), np.float32)
  wte[:cfg.vocab_size] = sd["wte.weight"]
  params = {"wte": wte, "wpe": sd["wpe.weight"], "ln_f": ln("ln_f")}
  if scan_layers:
    params["layers"] = {"block": _stack(layers)}
  else:
    params.update({f"layers_{i}": {"block": layer} for i, layer in enumerate(layers)})
  return cfg, params


def _stack(trees):
  return {k: _stack([t[k] for t in trees]) if isinstance(trees[0][k], dict) else np.stack([t[k] for t in trees])
          for k in trees[0]}


def params_to_hf(cfg: ModelConfig, params: Mapping[str, Any], pad_token_id: Optional[int] = None
                 ) -> Tuple[dict, dict]:
  """(GPT-2 state dict of NumPy float32 arrays named 'transformer.*' (and a classifier's 'score.weight'),
  config.json dict); padding dropped."""
  check_exportable(cfg)
  if "params" in params and "wte" not in params:
    params = params["params"]
  params = nn.meta.unbox(params)
  d = cfg.d_model
  sd = {"wte.weight": np.asarray(params["wte"])[:cfg.vocab_size], "wpe.weight": np.asarray(params["wpe"]),
        "ln_f.weight": np.asarray(params["ln_f"]["scale"]), "ln_f.bias": np.asarray(params["ln_f"]["bias"])}
  for i in range(cfg.n_layers):
    layer, p = _layer_tree(params, i), f"h.{i}"
    for ln_name in ("ln_1", "ln_2"):
      sd[f"{p}.{ln_name}.weight"], sd[f"{p}.{ln_name}.bias"] = layer[ln_name]["scale"], layer[ln_name]["bias"]
    att, mlp = layer["attention"], layer["mlp"]
    sd[f"{p}.attn.c_attn.weight"] = att["qkv_kernel"].reshape(d, 3 * d)
    sd[f"{p}.attn.c_attn.bias"] = att["qkv_bias"].reshape(3 * d)
    sd[f"{p}.attn.c_proj.weight"] = att["out_kernel"].reshape(d, d)
    sd[f"{p}.attn.c_proj.bias"] = att["out_bias"]
    sd[f"{p}.mlp.c_fc.weight"], sd[f"{p}.mlp.c_fc.bias"] = mlp["in_kernel"], mlp["in_bias"]
    sd[f"{p}.mlp.c_proj.weight"], sd[f"{p}.mlp.c_proj.bias"] = mlp["out_kernel"], mlp["out_bias"]
  sd = {_PREFIX + k: np.ascontiguousarray(v, np.float32) for k, v in sd.items()}
  if cfg.class_labels:  # torch Linear(n_embd, num_labels, bias=False): weight [num_labels, n_embd]
    sd["score.weight"] = np.ascontiguousarray(np.asarray(params["score"]).T, np.float32)
  return sd, config_to_hf(cfg, pad_token_id)
