"""Convert between a Hugging Face GPT-2 directory and a gpt3_jax params checkpoint.

  python -m gpt3_jax.convert --from_hf=HF_DIR --workdir=OUT   # HF config.json + weights -> OUT/hf_import (orbax)
                                                              #   and OUT/model_config.json
  python -m gpt3_jax.convert --to_hf=HF_DIR --workdir=IN      # IN/<checkpoint> + IN/model_config.json ->
                                                              #   HF_DIR/config.json + HF_DIR/model.safetensors

Import reads model.safetensors (or a sharded model.safetensors.index.json) with the safetensors NumPy API, or
pytorch_model.bin (needs torch). Export writes safetensors with NumPy only; transformers.GPT2LMHeadModel
.from_pretrained(HF_DIR) loads it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags

from gpt3_jax.interop import hf_gpt2
from gpt3_jax.model.config import ModelConfig

CHECKPOINT_NAME = "hf_import"
CONFIG_NAME = "model_config.json"


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


def import_hf(hf_dir: str, workdir: str, *, checkpoint: str = CHECKPOINT_NAME) -> ModelConfig:
  """HF GPT-2 directory -> orbax params at workdir/checkpoint and workdir/model_config.json."""
  with open(os.path.join(hf_dir, "config.json")) as f:
    hf_config = json.load(f)
  cfg, params = hf_gpt2.params_from_hf(load_hf_state_dict(hf_dir), hf_config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(workdir, checkpoint), jax.tree.map(np.asarray, params))
  checkpointer.wait_until_finished()
  checkpointer.close()
  with open(os.path.join(workdir, CONFIG_NAME), "w") as f:
    json.dump(dataclasses.asdict(cfg), f, indent=2)
  return cfg


def load_workdir(workdir: str, *, checkpoint: str = CHECKPOINT_NAME):
  """(ModelConfig, params as NumPy) from a training run's newest checkpoint or a directory written by
  `import_hf`."""
  workdir = os.path.abspath(workdir)
  if os.path.isdir(os.path.join(workdir, "checkpoints")):
    from gpt3_jax.inference import session
    cfg, params, _ = session.restore_training_params(os.path.join(workdir, "checkpoints"))
    return cfg, jax.tree.map(np.asarray, params)
  with open(os.path.join(workdir, CONFIG_NAME)) as f:
    cfg = ModelConfig(**json.load(f))
  checkpointer = ocp.StandardCheckpointer()
  params = checkpointer.restore(os.path.join(workdir, checkpoint))
  checkpointer.close()
  return cfg, jax.tree.map(np.asarray, params)


def export_hf(workdir: str, hf_dir: str, *, checkpoint: str = CHECKPOINT_NAME) -> None:
  """workdir (model_config.json + orbax params) -> hf_dir/config.json + hf_dir/model.safetensors."""
  from safetensors.numpy import save_file

  cfg, params = load_workdir(workdir, checkpoint=checkpoint)
  state_dict, hf_config = hf_gpt2.params_to_hf(cfg, params)
  os.makedirs(hf_dir, exist_ok=True)
  save_file(state_dict, os.path.join(hf_dir, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(hf_dir, "config.json"), "w") as f:
    json.dump(hf_config, f, indent=2)


flags.DEFINE_string("from_hf", None, "Hugging Face GPT-2 directory to import into --workdir.")
flags.DEFINE_string("to_hf", None, "Directory to write a Hugging Face GPT-2 export of --workdir into.")
flags.DEFINE_string("workdir", None, "gpt3_jax directory: model_config.json + an orbax params checkpoint.")
flags.DEFINE_string("checkpoint", CHECKPOINT_NAME, "Name of the params checkpoint inside --workdir.")
FLAGS = flags.FLAGS


def main(argv: Optional[list] = None) -> None:
  del argv
  if FLAGS.workdir is None or (FLAGS.from_hf is None) == (FLAGS.to_hf is None):
    raise app.UsageError("give --workdir and exactly one of --from_hf / --to_hf")
  if FLAGS.from_hf:
    cfg = import_hf(FLAGS.from_hf, FLAGS.workdir, checkpoint=FLAGS.checkpoint)
    print(f"imported {FLAGS.from_hf} -> {FLAGS.workdir}: {cfg}")
  else:
    export_hf(FLAGS.workdir, FLAGS.to_hf, checkpoint=FLAGS.checkpoint)
    print(f"exported {FLAGS.workdir} -> {FLAGS.to_hf}")


if __name__ == "__main__":
  app.run(main)
