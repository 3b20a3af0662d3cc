"""The training loop: validate, prepare data, create or restore the sharded state, step, evaluate, save."""

from __future__ import annotations

import collections
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
from gpt3_jax.model import attention
from gpt3_jax.model.config import ModelConfig, flops_per_token
from gpt3_jax.parallel import hardware
from gpt3_jax.parallel import mesh as mesh_lib
from gpt3_jax.training import optimizer as optimizer_lib
from gpt3_jax.training import train_state as state_lib
from gpt3_jax.training import train_step as step_lib
from gpt3_jax.training.batch_ramp import BatchRamp
from gpt3_jax.training.checkpointing import CheckpointConfig, Checkpointer
from gpt3_jax.training.metrics import MetricsLogger
from gpt3_jax.training.preemption import PreemptionWatcher

# ModelConfig fields that define the parameters: a checkpoint written with other values cannot be restored.
ARCHITECTURE_FIELDS = ("vocab_size", "n_ctx", "d_model", "n_layers", "n_heads", "d_head", "d_ff",
                       "attention_pattern", "local_window", "scan_layers")
# TrainConfig fields that fix the data position and the tokens seen at a step.
STREAM_FIELDS = ("global_batch_size", "seed", "batch_ramp_tokens", "batch_ramp_start_tokens")


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
  # Numerical faults: a non-finite step changes nothing; this many in a row stop the run.
  max_consecutive_nonfinite: int = 5
  # Loss spikes (PaLM): loss > spike_factor x the mean of the last spike_window losses restores the newest
  # checkpoint before the spike and skips spike_skip_batches batches. spike_factor 0 turns detection off.
  spike_factor: float = 0.0
  spike_window: int = 20
  spike_skip_batches: int = 100
  max_spike_recoveries: int = 3
  # Batch-size ramp (Appendix B): linear from batch_ramp_start_tokens per batch to the full batch over
  # batch_ramp_tokens tokens, in power-of-two stages. 0 turns it off.
  batch_ramp_tokens: float = 0.0
  batch_ramp_start_tokens: float = 32768


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
  attention.check_attention_impl(model_cfg.attention_impl)
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
  for name in ("train_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
    if getattr(train_cfg, name) <= 0:
      raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(train_cfg, name)}")
  if train_cfg.spike_factor > 0 and train_cfg.keep_checkpoints < 2:
    raise ValueError("spike recovery needs TrainConfig.keep_checkpoints >= 2 (the checkpoint written just before a "
                     "spike is read may already belong to it)")
  corpus_lib.check_sources(data_cfg)
  _check_workdir(workdir)
  return mesh


def check_compatible(saved: Dict[str, Any], model_cfg: ModelConfig, train_cfg: TrainConfig, seq_len: int,
                     base_batch: int) -> None:
  """Refuses to resume from a checkpoint whose parameters or data stream do not match this run."""
  saved_model = saved.get("model_config", {})
  for field in ARCHITECTURE_FIELDS:
    if field in saved_model and saved_model[field] != getattr(model_cfg, field):
      raise ValueError(f"the checkpoint in the workdir was written with ModelConfig.{field}="
                       f"{saved_model[field]!r} but this run has {getattr(model_cfg, field)!r}; use a new --workdir "
                       f"or the checkpoint's setting")
  stream = [(f, getattr(train_cfg, f)) for f in STREAM_FIELDS]
  for field, value in [("base_batch", base_batch), ("seq_len", seq_len)] + stream:
    if field in saved and saved[field] != value:
      raise ValueError(f"the checkpoint's data position assumes {field}={saved[field]!r} but this run has "
                       f"{value!r}; resume with the same batch / seq_len / seed settings or use a new --workdir")


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


UNIGRAM_SAMPLE_TOKENS = 50_000_000  # the baseline's unigram counts come from at most this prefix of the stream


class NonFiniteLossError(FloatingPointError):
  """Too many consecutive steps with a non-finite loss or gradient."""


class _DataFeed:
  """Global batches of a ramp stage assembled from consecutive base batches of the data stream."""

  def __init__(self, data_iter, mesh, base_batch: int):
    self.data_iter = data_iter
    self.sharding = mesh_lib.batch_sharding(mesh)
    self.base_batch = base_batch

  def next(self, batch_size: int) -> jax.Array:
    parts = [next(self.data_iter) for _ in range(batch_size // self.base_batch)]
    local = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return jax.make_array_from_process_local_data(self.sharding, local)

  def skip(self, batches: int) -> None:
    for _ in range(batches):
      next(self.data_iter)


def train(model_cfg: ModelConfig, data_cfg: corpus_lib.DataConfig, opt_cfg: optimizer_lib.OptimizerConfig,
          mesh_cfg: mesh_lib.MeshConfig, train_cfg: TrainConfig, workdir: str) -> Dict[str, Any]:
  """Trains (or resumes) in `workdir` and returns a summary of the final evaluation."""
  if "://" in workdir:
    raise ValueError(f"workdir {workdir!r} is a URL; use a local or mounted (e.g. NFS, gcsfuse) directory")
  workdir = os.path.abspath(workdir)  # orbax needs absolute paths
  mesh = validate(model_cfg, data_cfg, mesh_cfg, train_cfg, workdir)
  primary = jax.process_index() == 0
  seq_len = train_cfg.seq_len or model_cfg.n_ctx
  ramp = BatchRamp(full_batch=train_cfg.global_batch_size, seq_len=seq_len, ramp_tokens=train_cfg.batch_ramp_tokens,
                   start_tokens=train_cfg.batch_ramp_start_tokens,
                   granularity=mesh_lib.data_parallel_size(mesh) * train_cfg.num_microbatches)

  corpus = corpus_lib.prepare_corpus(data_cfg)
  model_cfg = model_cfg.replace(vocab_size=corpus.vocab_size)
  tx = optimizer_lib.make_optimizer(opt_cfg)
  meta = {"model_config": dataclasses.asdict(model_cfg), "base_batch": ramp.base_batch, "seq_len": seq_len,
          "tokenizer_path": corpus.tokenizer_path, "data_fingerprint": corpus.fingerprint,
          **{f: getattr(train_cfg, f) for f in STREAM_FIELDS}}

  def check_meta(saved):
    check_compatible(saved, model_cfg, train_cfg, seq_len, ramp.base_batch)
    if saved.get("data_fingerprint", corpus.fingerprint) != corpus.fingerprint:
      raise ValueError("the checkpoint's data position belongs to other data (sources, token counts or weights "
                       "changed); resume with the same DataConfig or use a new --workdir")

  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), CheckpointConfig(
      every_steps=train_cfg.checkpoint_every, keep=train_cfg.keep_checkpoints,
      async_save=train_cfg.async_checkpointing))
  data_mixture = corpus.mixture(seq_len=seq_len, global_batch_size=ramp.base_batch, seed=train_cfg.seed)
  data_iter = data_mixture.iterator(process_index=jax.process_index(), process_count=jax.process_count())
  feed = _DataFeed(data_iter, mesh, ramp.base_batch)
  logger = MetricsLogger(workdir, enabled=primary, total_steps=train_cfg.train_steps)
  flops_token = flops_per_token(model_cfg, seq_len)
  peak_total = hardware.total_peak_flops(train_cfg.peak_flops_per_device)

  try:
    with mesh_lib.activate(mesh), PreemptionWatcher() as watcher:
      shardings = state_lib.state_shardings(model_cfg, tx, mesh)
      abstract = state_lib.abstract_state(model_cfg, tx, mesh)
      restored = checkpointer.restore_newest_good(abstract, check_meta=check_meta)
      loop_state = {}
      if restored is not None:
        _, state, data_state, saved_meta = restored
        data_iter.set_state(data_state)
        loop_state = saved_meta.get("loop", {})
        logging.info("resumed from step %d", int(state.step))
      else:
        state, _ = state_lib.create_state(model_cfg, tx, mesh, train_cfg.seed)
      step_fn = step_lib.jit_train_step(step_lib.make_train_step(model_cfg, tx, train_cfg.num_microbatches),
                                        shardings, mesh)
      eval_fn = step_lib.make_eval_step(model_cfg, shardings, mesh)
      compiled: Dict[int, Any] = {}
      compile_s = 0.0

      def compiled_step(batch_size: int):
        nonlocal compile_s
        if batch_size not in compiled:
          spec = jax.ShapeDtypeStruct((batch_size, seq_len + 1), np.int32, sharding=mesh_lib.batch_sharding(mesh))
          t0 = time.perf_counter()
          compiled[batch_size] = step_fn.lower(state, spec, np.float32(0)).compile()
          compile_s += time.perf_counter() - t0
          window["excluded"] += time.perf_counter() - t0  # compilation is not throughput
          if primary:
            logging.info("train step for batch %d compiled in %.1fs", batch_size, time.perf_counter() - t0)
        return compiled[batch_size]

      if primary:
        logging.info("model: %s", model_cfg)
        logging.info("%.3g FLOPs/token; peak %.3g FLOP/s; batch stages %s", flops_token, peak_total, ramp.stages)

      def run_eval(step: int) -> float:
        loss = evaluate(eval_fn, state.params, corpus.valid_tokens, seq_len=seq_len,
                        batch_size=train_cfg.global_batch_size, max_batches=train_cfg.eval_batches, mesh=mesh)
        logger.write(step, {"loss": loss, "perplexity": math.exp(min(loss, 50))}, prefix="eval")
        if primary:
          logging.info("eval at step %d: loss %.4f perplexity %.2f", step, loss, math.exp(min(loss, 50)))
        return loss

      # Loop state saved with every checkpoint, so a resumed run detects spikes and counts faults as before.
      counters = {"skipped_steps": 0, "spike_recoveries": 0, "consecutive_nonfinite": 0, **loop_state.get("counters", {})}
      history: collections.deque = collections.deque(loop_state.get("history", []),
                                                     maxlen=max(1, train_cfg.spike_window))

      def save(step: int) -> None:
        loop = {"counters": dict(counters), "history": list(history)}
        checkpointer.save(step, state, data_iter.get_state(), {**meta, "loop": loop})
      # Throughput between two logged steps: tokens of the steps in between over wall time, evaluation excluded.
      window = {"start": time.perf_counter(), "step": int(state.step), "excluded": 0.0}
      eval_loss, preempted = None, False

      def inspect(done: int, metrics, lr: float, batch_size: int, data_index: int) -> Optional[int]:
        """Reads one step's metrics (one step behind the device). Returns the spike step if one is detected."""
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if values["skipped"]:
          counters["skipped_steps"] += 1
          counters["consecutive_nonfinite"] += 1
          logging.warning("step %d: non-finite loss %s / grad norm %s; update skipped (%d in a row)", done,
                          values["loss"], values["grad_norm"], counters["consecutive_nonfinite"])
          if counters["consecutive_nonfinite"] >= train_cfg.max_consecutive_nonfinite:
            last = checkpointer.all_steps()
            good = done - counters["consecutive_nonfinite"]
            raise NonFiniteLossError(
                f"{counters['consecutive_nonfinite']} consecutive steps had a non-finite loss or gradient (steps "
                f"{good + 1}-{done}); stopping. Skipped steps change no parameters: the newest checkpoint (step "
                f"{last[-1] if last else None}) holds the parameters of step {min(good, last[-1]) if last else None}; "
                f"lower the learning rate or check the data")
        else:
          counters["consecutive_nonfinite"] = 0
          if (train_cfg.spike_factor > 0 and len(history) >= history.maxlen
              and values["loss"] > train_cfg.spike_factor * (sum(history) / len(history))):
            return done
          history.append(values["loss"])
        if done % train_cfg.log_every == 0 or done == train_cfg.train_steps:
          elapsed = time.perf_counter() - window["start"] - window["excluded"]
          tokens = ramp.tokens_before(done) - ramp.tokens_before(window["step"])
          tokens_s = tokens / elapsed if elapsed > 0 else 0.0
          values.update(learning_rate=lr, batch_size=float(batch_size), tokens_per_s=tokens_s,
                        mfu=tokens_s * flops_token / peak_total if peak_total else 0.0,
                        tokens_seen=float(ramp.tokens_before(done)), skipped_steps=float(counters["skipped_steps"]),
                        **data_mixture.metrics(data_index))
          logger.write(done, values)
          logger.progress(done, values)
          window.update(start=time.perf_counter(), step=done, excluded=0.0)
        return None

      def recover(spike_step: int, loss: float) -> int:
        """Restores the newest checkpoint before `spike_step`, skips batches; returns the restored step."""
        nonlocal state
        counters["spike_recoveries"] += 1
        if counters["spike_recoveries"] > train_cfg.max_spike_recoveries:
          raise NonFiniteLossError(f"loss spike at step {spike_step} after {train_cfg.max_spike_recoveries} "
                                   f"recoveries; stopping")
        checkpointer.wait()
        found = checkpointer.restore_newest_good(abstract, check_meta=check_meta, below=spike_step)
        if found is None:
          raise NonFiniteLossError(f"loss spike at step {spike_step} but no checkpoint before it to restore")
        step, state, data_state, _ = found
        checkpointer.set_aside_after(step, "abandoned")  # checkpoints of the spiking trajectory
        data_iter.set_state(data_state)
        skip = train_cfg.spike_skip_batches * (ramp.batch_size(step) // ramp.base_batch)
        feed.skip(skip)
        history.clear()
        window.update(start=time.perf_counter(), step=step, excluded=0.0)
        event = {"spike_step": float(spike_step), "loss": loss, "restored_step": float(step),
                 "skipped_batches": float(train_cfg.spike_skip_batches)}
        logger.write(spike_step, event, prefix="event")
        logging.warning("loss spike at step %d (loss %.4f): restored step %d and skipped %d batches", spike_step,
                        loss, step, train_cfg.spike_skip_batches)
        return step

      step = int(state.step)
      pending = None  # the newest dispatched step, whose metrics are read after the next step is dispatched
      while True:
        dispatched = None
        if step < train_cfg.train_steps:
          batch_size = ramp.batch_size(step)
          lr = float(optimizer_lib.learning_rate_at_tokens(opt_cfg, ramp.tokens_before(step)))
          state, metrics = compiled_step(batch_size)(state, feed.next(batch_size), np.float32(lr))
          step += 1
          dispatched = (step, metrics, lr, batch_size, data_iter.get_state()["next_index"])
        if pending is not None:
          spike = inspect(*pending)
          if spike is not None:
            step, pending = recover(spike, float(jax.device_get(pending[1])["loss"])), None
            continue
        pending = dispatched
        if pending is None:  # nothing left to dispatch and the last step was inspected
          break
        checkpointer.check_for_errors()
        if step % train_cfg.eval_every == 0 or step == train_cfg.train_steps:
          jax.block_until_ready(state)  # the step in flight is training time, not evaluation time
          eval_start = time.perf_counter()
          eval_loss = run_eval(step)
          window["excluded"] += time.perf_counter() - eval_start  # keep evaluation out of the throughput
        if checkpointer.due(step) or step == train_cfg.train_steps:
          save(step)
        if watcher.should_stop(step):
          spike = inspect(*pending)
          if spike is not None:  # recover first; the watcher stops the run after the next step
            step, pending = recover(spike, float(jax.device_get(pending[1])["loss"])), None
            continue
          save(step)
          checkpointer.wait()
          checkpointer.check_for_errors()
          logging.warning("preempted: saved step %d; run the same command again to resume", step)
          preempted = True
          break

      if eval_loss is None and not preempted:  # resumed at the end: evaluate the restored state
        eval_loss = run_eval(step)
      checkpointer.wait()
      checkpointer.check_for_errors()
  except BaseException:
    try:  # let in-flight saves finish, but never hide the error that stopped training
      checkpointer.close()
    except Exception as close_error:  # pylint: disable=broad-except
      logging.error("while stopping: %s", close_error)
    raise
  finally:
    logger.close()
  checkpointer.close()
  return {"step": int(state.step), "eval_loss": eval_loss,
          "eval_perplexity": math.exp(min(eval_loss, 50)) if eval_loss is not None else None,
          "unigram_loss": pipeline.unigram_cross_entropy(corpus.train_tokens[:UNIGRAM_SAMPLE_TOKENS],
                                                         corpus.valid_tokens, corpus.vocab_size),
          "compile_seconds": compile_s, "model_config": model_cfg, "state": state, "tokenizer": corpus.tokenizer,
          "preempted": preempted, **counters}
