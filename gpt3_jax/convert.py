"""Convert between a Hugging Face GPT-2 directory and a gpt3_jax workdir.

  python -m gpt3_jax.convert --from_hf=HF_DIR --workdir=OUT   # HF config.json + weights (+ tokenizer files) ->
                                                              #   OUT/hf_import, OUT/model_config.json, OUT/tokenizer
  python -m gpt3_jax.convert --to_hf=HF_DIR --workdir=IN      # IN's newest params -> HF_DIR/config.json +
                                                              #   HF_DIR/model.safetensors

Import reads model.safetensors (or a sharded model.safetensors.index.json) with the safetensors NumPy API, or
pytorch_model.bin (needs torch), and keeps the tokenizer files (tokenizer.json, vocab.json + merges.txt), so the
import can sample, score and be trained on text. Export writes safetensors with NumPy only;
transformers.GPT2LMHeadModel.from_pretrained(HF_DIR) loads it (a fine-tuned classifier:
GPT2ForSequenceClassification, with its labels and the end-of-text as padding token).
"""

from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from gpt3_jax import workdir as workdir_lib
from gpt3_jax.interop import hf_gpt2
from gpt3_jax.model.config import ModelConfig


def load_hf_state_dict(hf_dir: str) -> dict:
  """name -> NumPy array from model.safetensors, a sharded safetensors index, or pytorch_model.bin."""
  from safetensors.numpy import load_file

  single = os.path.join(hf_dir, "model.safetensors")
  index = os.path.join(hf_dir, "model.safetensors.index.json")
  if os.path.exists(single):
    return load_file(single)
  if os.path.exists(index):
    with open(index) as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
    return {k: v for name in files for k, v in load_file(os.path.join(hf_dir, name)).items()}
  torch_file = os.path.join(hf_dir, "pytorch_model.bin")
  if os.path.exists(torch_file):
    import torch  # only this legacy format needs torch
    return {k: v.float().numpy() for k, v in torch.load(torch_file, map_location="cpu", weights_only=True).items()}
  raise FileNotFoundError(f"{hf_dir} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def import_hf(hf_dir: str, workdir: str) -> ModelConfig:
  """HF GPT-2 directory -> a workdir with its params, ModelConfig and tokenizer files."""
  config_path = os.path.join(hf_dir, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"--from_hf={hf_dir!r} has no config.json; pass a Hugging Face GPT-2 directory")
  with open(config_path) as f:
    hf_config = json.load(f)
  hf_gpt2.check_exportable(hf_gpt2.config_from_hf(hf_config))  # refuse before reading any weights
  cfg, params = hf_gpt2.params_from_hf(load_hf_state_dict(hf_dir), hf_config)
  workdir_lib.save_import(workdir, cfg, params, hf_dir)
  return cfg


def load_workdir(workdir: str):
  """(ModelConfig, params as NumPy) of a training run's newest checkpoint or an import."""
  loaded = workdir_lib.load_model(workdir)
  return loaded.cfg, loaded.params


def export_hf(workdir: str, hf_dir: str) -> None:
  """workdir's newest params (LoRA adapters merged) -> hf_dir/config.json + hf_dir/model.safetensors (+ the
  import's tokenizer files)."""
  import shutil
  from safetensors.numpy import save_file

  from gpt3_jax.model import lora
  loaded = workdir_lib.load_model(workdir)
  pad = loaded.tokenizer().eot_id if loaded.cfg.class_labels and loaded.tokenizer_path else None
  state_dict, hf_config = hf_gpt2.params_to_hf(*lora.merge(loaded.cfg, loaded.params), pad)  # LoRA: folded in
  os.makedirs(hf_dir, exist_ok=True)
  save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, os.path.join(hf_dir, "model.safetensors"),
            metadata={"format": "pt"})
  with open(os.path.join(hf_dir, "config.json"), "w") as f:
    json.dump(hf_config, f, indent=2)
  if loaded.tokenizer_path and os.path.isdir(loaded.tokenizer_path):
    for name in os.listdir(loaded.tokenizer_path):
      shutil.copyfile(os.path.join(loaded.tokenizer_path, name), os.path.join(hf_dir, name))


def main(argv: Optional[list] = None) -> None:
  from absl import app
  del argv
  if FLAGS.workdir is None or (FLAGS.from_hf is None) == (FLAGS.to_hf is None):
    raise app.UsageError("give --workdir and exactly one of --from_hf / --to_hf")
  if FLAGS.from_hf:
    cfg = import_hf(FLAGS.from_hf, FLAGS.workdir)
    print(f"imported {FLAGS.from_hf} -> {FLAGS.workdir}: {cfg}")
  else:
    export_hf(FLAGS.workdir, FLAGS.to_hf)
    print(f"exported {FLAGS.workdir} -> {FLAGS.to_hf}")


if __name__ == "__main__":
  from absl import app, flags
  from gpt3_jax import errors
  flags.DEFINE_string("from_hf", None, "Hugging Face GPT-2 directory to import into --workdir.")
  flags.DEFINE_string("to_hf", None, "Directory to write a Hugging Face GPT-2 export of --workdir into.")
  flags.DEFINE_string("workdir", None, "gpt3_jax workdir: a training run, or the target of an import.")
  FLAGS = flags.FLAGS
  app.run(errors.one_line_errors(main))
