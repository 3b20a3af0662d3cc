"""The training loop: validate, prepare data, create or restore the sharded state, step, evaluate, save."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Dict, Optional

import jax
import numpy as np
from absl import logging

from gpt3_jax.data import corpus as corpus_lib
from gpt3_jax.data import pipeline
from gpt3_jax.data import text_files
from gpt3_jax.model.config import ModelConfig, flops_per_token
from gpt3_jax.parallel import hardware
from gpt3_jax.parallel import mesh as mesh_lib
from gpt3_jax.training import optimizer as optimizer_lib
from gpt3_jax.training import train_state as state_lib
from gpt3_jax.training import train_step as step_lib
from gpt3_jax.training.checkpointing import CheckpointConfig, Checkpointer
from gpt3_jax.training.metrics import MetricsLogger

# ModelConfig fields that define the parameters: a checkpoint written with other values cannot be restored.
ARCHITECTURE_FIELDS = ("vocab_size", "n_ctx", "d_model", "n_layers", "n_heads", "d_head", "d_ff",
                       "attention_pattern", "scan_layers")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The loop's settings. Batch sizes count sequences of `seq_len` tokens over all processes."""

  global_batch_size: int = 8
  seq_len: Optional[int] = None  # None: the model's n_ctx
  train_steps: int = 100
  num_microbatches: int = 1
  seed: int = 0
  log_every: int = 10
  eval_every: int = 100
  eval_batches: int = 8
  checkpoint_every: int = 100
  keep_checkpoints: int = 3
  async_checkpointing: bool = True
  peak_flops_per_device: Optional[float] = None  # None: datasheet peak, or a measured matmul on CPU
  sample_prompt: str = ""
  sample_tokens: int = 64
  sample_temperature: float = 0.8


def _check_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_probe_{jax.process_index()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ValueError(f"workdir {workdir!r} cannot be written ({e.strerror}); pass a writable --workdir") from None


def validate(model_cfg: ModelConfig, data_cfg: corpus_lib.DataConfig, mesh_cfg: mesh_lib.MeshConfig,
             train_cfg: TrainConfig, workdir: str):
  """Every cheap check, before any data preparation or compilation. Returns the mesh."""
  mesh = mesh_lib.make_mesh(mesh_cfg)
  dp = mesh_lib.data_parallel_size(mesh)
  b, m = train_cfg.global_batch_size, train_cfg.num_microbatches
  if b <= 0 or b % dp:
    raise ValueError(f"global_batch_size {b} is not divisible by the data-parallel size {dp} "
                     f"(mesh data x fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']}); use a multiple of {dp}")
  if m <= 0 or b % m or (b // m) % dp:
    raise ValueError(f"num_microbatches {m} must divide global_batch_size {b} into microbatches that are "
                     f"multiples of the data-parallel size {dp}")
  seq_len = train_cfg.seq_len or model_cfg.n_ctx
  if seq_len > model_cfg.n_ctx:
    raise ValueError(f"seq_len {seq_len} exceeds the model's position table n_ctx {model_cfg.n_ctx}; "
                     f"lower TrainConfig.seq_len or raise ModelConfig.n_ctx")
  if train_cfg.train_steps <= 0:
    raise ValueError(f"train_steps must be positive, got {train_cfg.train_steps}")
  text_files.find_files(data_cfg.paths or text_files.default_corpus_paths(),
                        data_cfg.extensions if data_cfg.paths else text_files.default_corpus_extensions())
  _check_workdir(workdir)
  return mesh


def check_compatible(saved: Dict[str, Any], model_cfg: ModelConfig, train_cfg: TrainConfig, seq_len: int) -> None:
  """Refuses to resume from a checkpoint whose parameters or data stream do not match this run."""
  saved_model = saved.get("model_config", {})
  for field in ARCHITECTURE_FIELDS:
    if field in saved_model and saved_model[field] != getattr(model_cfg, field):
      raise ValueError(f"the checkpoint in the workdir was written with ModelConfig.{field}="
                       f"{saved_model[field]!r} but this run has {getattr(model_cfg, field)!r}; use a new --workdir "
                       f"or the checkpoint's setting")
  for field, value in (("global_batch_size", train_cfg.global_batch_size), ("seq_len", seq_len),
                       ("seed", train_cfg.seed)):
    if field in saved and saved[field] != value:
      raise ValueError(f"the checkpoint's data position assumes TrainConfig.{field}={saved[field]!r} but this run "
                       f"has {value!r}; resume with the same value or use a new --workdir")


def _process_rows(batch: np.ndarray) -> np.ndarray:
  """This process's share of a global batch (rows are split evenly over processes)."""
  local = batch.shape[0] // jax.process_count()
  return batch[jax.process_index() * local:(jax.process_index() + 1) * local]


def evaluate(eval_fn, params, valid_tokens, *, seq_len: int, batch_size: int, max_batches: int, mesh) -> float:
  """Mean validation NLL (nats/token) over the first `max_batches` full batches of the held-out split."""
  total, count = 0.0, 0.0
  sharding = mesh_lib.batch_sharding(mesh)
  for batch in pipeline.eval_batches(valid_tokens, seq_len=seq_len, batch_size=batch_size,
                                     max_batches=max_batches, drop_remainder=True):
    array = jax.make_array_from_process_local_data(sharding, _process_rows(batch))
    nll, n = eval_fn(params, array)
    total, count = total + float(nll), count + float(n)
  if count == 0:
    raise ValueError(f"the validation split has fewer than {batch_size} windows of {seq_len + 1} tokens; use more "
                     f"data, a larger DataConfig.validation_fraction or a smaller batch")
  return total / count


def train(model_cfg: ModelConfig, data_cfg: corpus_lib.DataConfig, opt_cfg: optimizer_lib.OptimizerConfig,
          mesh_cfg: mesh_lib.MeshConfig, train_cfg: TrainConfig, workdir: str) -> Dict[str, Any]:
  """Trains (or resumes) in `workdir` and returns a summary of the final evaluation."""
  mesh = validate(model_cfg, data_cfg, mesh_cfg, train_cfg, workdir)
  primary = jax.process_index() == 0
  seq_len = train_cfg.seq_len or model_cfg.n_ctx

  corpus = corpus_lib.prepare_corpus(data_cfg)
  model_cfg = model_cfg.replace(vocab_size=corpus.tokenizer.vocab_size)
  tokens_per_step = train_cfg.global_batch_size * seq_len
  tx = optimizer_lib.make_optimizer(opt_cfg, tokens_per_step)
  meta = {"model_config": dataclasses.asdict(model_cfg), "global_batch_size": train_cfg.global_batch_size,
          "seq_len": seq_len, "seed": train_cfg.seed, "tokenizer_path": corpus.tokenizer_path}

  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), CheckpointConfig(
      every_steps=train_cfg.checkpoint_every, keep=train_cfg.keep_checkpoints,
      async_save=train_cfg.async_checkpointing))
  data_iter = pipeline.train_iterator(corpus.train_tokens, seq_len=seq_len,
                                      global_batch_size=train_cfg.global_batch_size, seed=train_cfg.seed,
                                      process_index=jax.process_index(), process_count=jax.process_count())
  logger = MetricsLogger(workdir, enabled=primary, total_steps=train_cfg.train_steps)
  flops_token = flops_per_token(model_cfg, seq_len)
  peak_total = (train_cfg.peak_flops_per_device * jax.device_count() if train_cfg.peak_flops_per_device
                else (hardware.device_peak_flops() or 0) * jax.device_count() or hardware.measure_matmul_flops())

  with mesh_lib.activate(mesh):
    shardings = state_lib.state_shardings(model_cfg, tx, mesh)
    latest = checkpointer.latest_step()
    if latest is not None:
      check_compatible(checkpointer.restore_meta(latest), model_cfg, train_cfg, seq_len)
      state, data_state, _ = checkpointer.restore(state_lib.abstract_state(model_cfg, tx, mesh), latest)
      data_iter.set_state(data_state)
      logging.info("resumed from step %d", latest)
    else:
      state, _ = state_lib.create_state(model_cfg, tx, mesh, train_cfg.seed)
    batch_sharding = mesh_lib.batch_sharding(mesh)
    step_fn = step_lib.jit_train_step(step_lib.make_train_step(model_cfg, tx, train_cfg.num_microbatches),
                                      shardings, mesh)
    eval_fn = step_lib.make_eval_step(model_cfg, shardings, mesh)

    start_step = int(state.step)
    next_batch = lambda: jax.make_array_from_process_local_data(batch_sharding, next(data_iter))
    batch_spec = jax.ShapeDtypeStruct((train_cfg.global_batch_size, seq_len + 1), np.int32, sharding=batch_sharding)
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, batch_spec).compile()
    compile_s = time.perf_counter() - t0
    if primary:
      logging.info("model: %s", model_cfg)
      logging.info("train step compiled in %.1fs; %.3g FLOPs/token; peak %.3g FLOP/s", compile_s, flops_token,
                   peak_total)

    eval_loss = None
    window_start, window_steps = time.perf_counter(), 0
    for step in range(start_step, train_cfg.train_steps):
      state, metrics = compiled(state, next_batch())
      window_steps += 1
      done = step + 1
      if done % train_cfg.log_every == 0 or done == train_cfg.train_steps:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        elapsed = time.perf_counter() - window_start
        tokens_s = window_steps * tokens_per_step / elapsed
        metrics.update(learning_rate=float(optimizer_lib.learning_rate_at_tokens(opt_cfg, step * tokens_per_step)),
                       tokens_per_s=tokens_s, mfu=tokens_s * flops_token / peak_total if peak_total else 0.0,
                       tokens_seen=float(done * tokens_per_step))
        logger.write(done, metrics)
        logger.progress(done, metrics)
        window_start, window_steps = time.perf_counter(), 0
        if not math.isfinite(metrics["loss"]):
          raise FloatingPointError(f"loss became {metrics['loss']} at step {done}; lower the learning rate")
      if done % train_cfg.eval_every == 0 or done == train_cfg.train_steps:
        eval_loss = evaluate(eval_fn, state.params, corpus.valid_tokens, seq_len=seq_len,
                             batch_size=train_cfg.global_batch_size, max_batches=train_cfg.eval_batches, mesh=mesh)
        logger.write(done, {"loss": eval_loss, "perplexity": math.exp(min(eval_loss, 50))}, prefix="eval")
        if primary:
          logging.info("eval at step %d: loss %.4f perplexity %.2f", done, eval_loss, math.exp(min(eval_loss, 50)))
        window_start = time.perf_counter()  # keep evaluation out of the throughput window
      checkpointer.save(done, state, data_iter.get_state(), meta, force=done == train_cfg.train_steps)

    if eval_loss is None:  # resumed at the end: evaluate the restored state
      eval_loss = evaluate(eval_fn, state.params, corpus.valid_tokens, seq_len=seq_len,
                           batch_size=train_cfg.global_batch_size, max_batches=train_cfg.eval_batches, mesh=mesh)
    checkpointer.close()
    logger.close()
    summary = {"step": int(state.step), "eval_loss": eval_loss, "eval_perplexity": math.exp(min(eval_loss, 50)),
               "unigram_loss": pipeline.unigram_cross_entropy(corpus.train_tokens, corpus.valid_tokens,
                                                              corpus.tokenizer.vocab_size),
               "compile_seconds": compile_s, "model_config": model_cfg, "state": state, "tokenizer": corpus.tokenizer}
  return summary
