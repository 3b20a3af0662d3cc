"""Every cheap check of a training run's configuration, before any data preparation, compilation or write, and
the check that a checkpoint belongs to this run."""

from __future__ import annotations

import os
from typing import Any, Dict

import jax

from gpt3_jax import workdir as workdir_lib
from gpt3_jax.data import corpus as corpus_lib
from gpt3_jax.model import attention
from gpt3_jax.model.config import ModelConfig
from gpt3_jax.parallel import mesh as mesh_lib
from gpt3_jax.training import best_checkpoint
from gpt3_jax.training.config import ARCHITECTURE_FIELDS, STREAM_FIELDS, TrainConfig


def check_workdir(workdir: str) -> None:
  """The workdir can be created and written (a probe file, removed again)."""
  if "://" in workdir:
    raise ValueError(f"workdir {workdir!r} is a URL; use a local or mounted (e.g. NFS, gcsfuse) directory")
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_probe_{jax.process_index()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ValueError(f"workdir {workdir!r} cannot be written ({e.strerror}); pass a writable --workdir") from None


def _check_batch(mesh, train_cfg: TrainConfig) -> None:
  dp = mesh_lib.data_parallel_size(mesh)
  b, m = train_cfg.global_batch_size, train_cfg.num_microbatches
  if b <= 0 or b % dp:
    raise ValueError(f"global_batch_size {b} is not divisible by the data-parallel size {dp} "
                     f"(mesh data x fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']}); use a multiple of {dp}")
  if m <= 0 or b % m or (b // m) % dp:
    raise ValueError(f"num_microbatches {m} must divide global_batch_size {b} into microbatches that are "
                     f"multiples of the data-parallel size {dp}")


def _check_train_config(model_cfg: ModelConfig, train_cfg: TrainConfig, workdir: str) -> None:
  seq_len = train_cfg.resolved_seq_len(model_cfg.n_ctx)
  if seq_len > model_cfg.n_ctx:
    raise ValueError(f"seq_len {seq_len} exceeds the model's position table n_ctx {model_cfg.n_ctx}; "
                     f"lower TrainConfig.seq_len or raise ModelConfig.n_ctx")
  # Positive steps, cadences and batch sizes are TrainConfig's own checks (it cannot be built without them).
  if train_cfg.spike_factor > 0 and train_cfg.keep_checkpoints < 2:
    raise ValueError("spike recovery needs TrainConfig.keep_checkpoints >= 2 (the checkpoint written just before a "
                     "spike is read may already belong to it)")
  best_checkpoint.check(train_cfg, model_cfg)
  source = train_cfg.init_from
  if source and not (workdir_lib.has_checkpoints(source) or workdir_lib.is_import(source)):
    raise ValueError(f"TrainConfig.init_from={source!r} holds neither training checkpoints nor a Hugging Face "
                     f"import; pass the workdir of a training run or of `python -m gpt3_jax.convert --from_hf`")
  branch = train_cfg.branch_from
  if branch and source:
    raise ValueError("TrainConfig.branch_from and init_from are both set; branch_from continues a run's full "
                     "state, init_from starts from its parameters: keep one")
  if branch and not workdir_lib.has_checkpoints(branch):
    raise ValueError(f"TrainConfig.branch_from={branch!r} holds no training checkpoints; pass the workdir of a "
                     f"training run")
  if branch and os.path.abspath(branch) == os.path.abspath(workdir):
    raise ValueError("TrainConfig.branch_from is this run's own --workdir; branch into a new --workdir")
  if branch and train_cfg.branch_step:
    steps = workdir_lib.checkpoint_steps(branch)
    if train_cfg.branch_step not in steps:
      raise ValueError(f"TrainConfig.branch_step={train_cfg.branch_step} is not a checkpoint of {branch!r}; it has "
                       f"steps {steps}")
  if source and os.path.abspath(source) == os.path.abspath(workdir):
    raise ValueError("TrainConfig.init_from is this run's own --workdir; a run resumes its own checkpoints "
                     "without it: drop the binding or pass another workdir")


def validate(model_cfg: ModelConfig, data_cfg: corpus_lib.DataConfig, mesh_cfg: mesh_lib.MeshConfig,
             train_cfg: TrainConfig, workdir: str):
  """Every cheap check, before any data preparation or compilation. Returns the mesh."""
  attention.check_attention_impl(model_cfg.attention_impl)
  mesh = mesh_lib.make_mesh(mesh_cfg)
  _check_batch(mesh, train_cfg)
  _check_train_config(model_cfg, train_cfg, workdir)
  if isinstance(data_cfg, corpus_lib.DataConfig):
    corpus_lib.check_sources(data_cfg)
  else:  # fine-tuning examples (finetune/sft_data.SFTData): read them now, before anything is written
    data_cfg.check()
  check_workdir(workdir)
  return mesh


def check_compatible(saved: Dict[str, Any], model_cfg: ModelConfig, train_cfg: TrainConfig, seq_len: int,
                     base_batch: int, data_seed: int) -> None:
  """Refuses to resume from a checkpoint whose parameters or data stream do not match this run."""
  saved_model = saved.get("model_config", {})
  for field in ARCHITECTURE_FIELDS:
    saved_value = saved_model.get(field)
    if isinstance(saved_value, list):  # JSON keeps tuples as lists
      saved_value = tuple(saved_value)
    if field in saved_model and saved_value != getattr(model_cfg, field):
      raise ValueError(f"the checkpoint in the workdir was written with ModelConfig.{field}="
                       f"{saved_model[field]!r} but this run has {getattr(model_cfg, field)!r}; use a new --workdir "
                       f"or the checkpoint's setting")
  stream = [(f, getattr(train_cfg, f)) for f in STREAM_FIELDS]
  for field, value in [("base_batch", base_batch), ("seq_len", seq_len), ("data_seed", data_seed)] + stream:
    if field in saved and saved[field] != value:
      raise ValueError(f"the checkpoint's data position assumes {field}={saved[field]!r} but this run has "
                       f"{value!r}; resume with the same batch / seq_len / DataConfig.seed settings or use a new "
                       f"--workdir")
