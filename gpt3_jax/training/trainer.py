"""The training loop. `train` validates, assembles the run (`assembly`), chooses its initial state (scratch,
resume or `TrainConfig.init_from`) and steps; guards, evaluation, checkpointing and metrics are pieces called at
their cadence (`guards`, `hooks`)."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Dict, Optional, Sequence

import jax
import numpy as np
from absl import logging

from gpt3_jax import workdir as workdir_lib
from gpt3_jax.data import corpus as corpus_lib
from gpt3_jax.data import pipeline
from gpt3_jax.model.config import ModelConfig, flops_per_token
from gpt3_jax.parallel import hardware
from gpt3_jax.parallel import mesh as mesh_lib
from gpt3_jax.training import guards
from gpt3_jax.training import hooks as hooks_lib
from gpt3_jax.training import optimizer as optimizer_lib
from gpt3_jax.training.assembly import Assembly, assemble
from gpt3_jax.training.batch_ramp import BatchRamp
from gpt3_jax.training.checkpointing import CheckpointConfig, Checkpointer
from gpt3_jax.training.config import STREAM_FIELDS, TrainConfig
from gpt3_jax.training.data_feed import DataFeed
from gpt3_jax.training.loop_state import LoopState, Throughput
from gpt3_jax.training.metrics import MetricsLogger
from gpt3_jax.training.preemption import PreemptionWatcher
from gpt3_jax.training.run_result import RunResult
from gpt3_jax.training.validation import check_compatible, validate

UNIGRAM_SAMPLE_TOKENS = 50_000_000  # the baseline's unigram counts come from at most this prefix of the stream


@dataclasses.dataclass
class Run:
  """One training run's pieces and mutable state, shared by the loop, the guards and the hooks."""
  asm: Assembly
  cfg: TrainConfig
  opt_cfg: optimizer_lib.OptimizerConfig
  ramp: BatchRamp
  corpus: Any
  mixture: Any
  feed: DataFeed
  checkpointer: Checkpointer
  meta: Dict[str, Any]
  check_meta: Callable[[Dict[str, Any]], None]
  flops_token: float
  peak_total: float
  primary: bool
  state: Any = None
  loop: Optional[LoopState] = None
  logger: Optional[MetricsLogger] = None
  window: Optional[Throughput] = None
  initialized_from: str = "scratch"
  eval_metrics: Optional[Dict[str, float]] = None
  tasks: Sequence = ()  # few-shot tasks (TrainConfig.task_eval_tasks), read before any write
  task_results: Optional[Dict[str, Any]] = None
  best: Optional[Dict[str, Any]] = None  # the kept best parameters' metric, value and step (best_checkpoint.py)
  compiled: Dict[int, Any] = dataclasses.field(default_factory=dict)
  compile_seconds: float = 0.0

  def compiled_step(self, batch_size: int):
    if batch_size not in self.compiled:
      start = time.perf_counter()
      self.compiled[batch_size] = self.asm.compile_train_step(batch_size)
      seconds = time.perf_counter() - start
      self.compile_seconds += seconds
      self.window.exclude(seconds)  # compilation is not throughput
      if self.primary:
        logging.info("train step for batch %d compiled in %.1fs", batch_size, seconds)
    return self.compiled[batch_size]

  def dispatch(self, step: int) -> guards.StepRecord:
    """Starts step `step` + 1 on the devices (asynchronously)."""
    batch_size = self.ramp.batch_size(step)
    lr = float(optimizer_lib.learning_rate_at_tokens(self.opt_cfg, self.ramp.tokens_before(step)))
    self.state, metrics = self.compiled_step(batch_size)(self.state, self.feed.next(batch_size), np.float32(lr))
    return guards.StepRecord(step + 1, metrics, lr, batch_size, self.feed.position())

  def save(self, step: int) -> None:
    self.checkpointer.save(step, self.state, self.feed.data_iter.get_state(),
                           {**self.meta, "loop": self.loop.to_saved()})


def _tasks(train_cfg: TrainConfig) -> Sequence:
  if not train_cfg.task_eval_tasks:
    return ()
  from gpt3_jax.evaluation import catalog
  return catalog.load_tasks(train_cfg.task_eval_tasks, train_cfg.task_eval_dir or None)


def _build(model_cfg: ModelConfig, data_cfg, opt_cfg, mesh, train_cfg: TrainConfig, workdir: str) -> Run:
  """Prepares the data and assembles the run (nothing is written to the workdir but the checkpoint folder)."""
  seq_len = train_cfg.resolved_seq_len(model_cfg.n_ctx)
  ramp = BatchRamp(full_batch=train_cfg.global_batch_size, seq_len=seq_len, ramp_tokens=train_cfg.batch_ramp_tokens,
                   start_tokens=train_cfg.batch_ramp_start_tokens,
                   granularity=mesh_lib.data_parallel_size(mesh) * train_cfg.num_microbatches)
  tasks = _tasks(train_cfg)  # their files are read before the data is prepared
  # A DataConfig is prepared into token streams; fine-tuning data (finetune/sft_data.SFTData) into its rows.
  corpus = (corpus_lib.prepare_corpus(data_cfg) if isinstance(data_cfg, corpus_lib.DataConfig)
            else data_cfg.prepare(seq_len))
  if tasks and corpus.tokenizer is None:
    raise ValueError("TrainConfig.task_eval_tasks needs a tokenizer (token-file data has none); set "
                     "DataConfig.tokenizer_path or drop the tasks")
  model_cfg = model_cfg.replace(vocab_size=corpus.vocab_size)
  asm = assemble(model_cfg, opt_cfg, mesh, seq_len=seq_len, num_microbatches=train_cfg.num_microbatches)
  meta = {"model_config": dataclasses.asdict(model_cfg), "base_batch": ramp.base_batch, "seq_len": seq_len,
          "data_seed": data_cfg.seed, "tokenizer_path": corpus.tokenizer_path, "data_fingerprint": corpus.fingerprint,
          **{f: getattr(train_cfg, f) for f in STREAM_FIELDS}}

  def check_meta(saved):
    check_compatible(saved, model_cfg, train_cfg, seq_len, ramp.base_batch, data_cfg.seed)
    if saved.get("data_fingerprint", corpus.fingerprint) != corpus.fingerprint:
      raise ValueError("the checkpoint's data position belongs to other data (sources, token counts or weights "
                       "changed); resume with the same DataConfig or use a new --workdir")

  mixture = corpus.mixture(seq_len=seq_len, global_batch_size=ramp.base_batch, seed=data_cfg.seed)
  data_iter = mixture.iterator(process_index=jax.process_index(), process_count=jax.process_count())
  checkpointer = Checkpointer(workdir_lib.checkpoints_dir(workdir), CheckpointConfig(
      every_steps=train_cfg.checkpoint_every, keep=train_cfg.keep_checkpoints,
      async_save=train_cfg.async_checkpointing))
  return Run(asm=asm, cfg=train_cfg, opt_cfg=opt_cfg, ramp=ramp, corpus=corpus, mixture=mixture, tasks=tasks,
             feed=DataFeed(data_iter, asm, ramp.base_batch), checkpointer=checkpointer, meta=meta,
             check_meta=check_meta, flops_token=flops_per_token(model_cfg, seq_len),
             peak_total=hardware.total_peak_flops(train_cfg.peak_flops_per_device),
             primary=jax.process_index() == 0)


def initial_state(run: Run) -> None:
  """Resumes the workdir's newest good checkpoint (data position and loop state included); else continues
  `TrainConfig.branch_from`'s checkpoint the same way; else starts from `TrainConfig.init_from`'s parameters with a
  fresh optimizer at step 0; else from scratch."""
  restored = run.checkpointer.restore_newest_good(run.asm.abstract_state, check_meta=run.check_meta)
  saved_loop, branched = {}, restored is None and bool(run.cfg.branch_from)
  if branched:
    restored = _branch(run)
  if restored is not None:
    _, run.state, data_state, saved_meta = restored
    run.feed.data_iter.set_state(data_state)
    saved_loop = saved_meta.get("loop", {})
    run.initialized_from = f"{run.cfg.branch_from}@{int(run.state.step)}" if branched else "resumed"
    logging.info("%s from step %d", "branched" if branched else "resumed", int(run.state.step))
  elif run.cfg.init_from:
    source = workdir_lib.load_model(run.cfg.init_from)
    run.state, run.initialized_from = run.asm.state_from_params(source.params), run.cfg.init_from
    logging.info("initialized from the parameters of %s (step %s)", run.cfg.init_from, source.step)
  else:
    run.state = run.asm.fresh_state(run.cfg.seed)
  run.loop = LoopState.from_saved(saved_loop, run.cfg.spike_window)


def _branch(run: Run):
  """(step, state, data state, meta) of TrainConfig.branch_from's checkpoint at branch_step (0: its newest)."""
  source = Checkpointer(workdir_lib.checkpoints_dir(run.cfg.branch_from), CheckpointConfig(async_save=False))
  try:
    step = run.cfg.branch_step or source.all_steps()[-1]
    run.check_meta(source.restore_meta(step))
    return (step, *source.restore(run.asm.abstract_state, step))
  finally:
    source.close()


def _loop(run: Run, hooks: Sequence, watcher: PreemptionWatcher) -> bool:
  """Steps to train_steps. Each step's metrics are read after the next step is dispatched, so the host never
  waits for the device. Returns True when preempted (after saving)."""
  step, pending, last = int(run.state.step), None, run.cfg.train_steps
  while True:
    dispatched = run.dispatch(step) if step < last else None
    step = dispatched.step if dispatched else step
    if pending is not None and (restored := guards.inspect(run, pending)) is not None:
      step, pending = restored, None
      continue
    pending = dispatched
    if pending is None:  # nothing left to dispatch and the last step was inspected
      return False
    run.checkpointer.check_for_errors()
    for hook in hooks:
      if step % hook.every(run.cfg) == 0 or step == last:
        hook(run, step)
    if watcher.should_stop(step):
      if (restored := guards.inspect(run, pending)) is not None:  # recover first; stop after the next step
        step, pending = restored, None
        continue
      run.save(step)
      run.checkpointer.wait()
      run.checkpointer.check_for_errors()
      logging.warning("preempted: saved step %d; run the same command again to resume", step)
      return True


def unigram_baseline(corpus) -> float:
  """The add-one unigram cross-entropy of each source's validation split (counts from its train split),
  weighted like the evaluation's mean; a corpus with its own `baseline` (a classifier's label prior) gives that."""
  if getattr(corpus, "baseline", None) is not None:
    return corpus.baseline
  def scored(tokens, stream):  # fine-tuning streams: only the scored (completion) tokens
    return tokens[tokens >= 0] if getattr(stream, "masked", False) else tokens

  losses = [pipeline.unigram_cross_entropy(scored(s.train_tokens[:UNIGRAM_SAMPLE_TOKENS], s),
                                           scored(s.valid_tokens, s), corpus.vocab_size) for s in corpus.streams]
  return sum(w * x for w, x in zip(corpus.weights, losses)) / sum(corpus.weights)


def _result(run: Run, preempted: bool) -> RunResult:
  metrics = run.eval_metrics or {}
  return RunResult(step=int(run.state.step), eval_loss=metrics.get("loss"), eval_metrics=dict(metrics),
                   unigram_loss=unigram_baseline(run.corpus),
                   compile_seconds=run.compile_seconds, model_config=run.asm.model, state=run.state,
                   tokenizer=run.corpus.tokenizer, preempted=preempted, initialized_from=run.initialized_from,
                   task_results=run.task_results or {}, best=run.best,
                   tokens=float(run.ramp.tokens_before(int(run.state.step))), flops_per_token=run.flops_token,
                   **{k: getattr(run.loop, k) for k in LoopState.COUNTERS})


def train(model_cfg: ModelConfig, data_cfg: corpus_lib.DataConfig, opt_cfg: optimizer_lib.OptimizerConfig,
          mesh_cfg: mesh_lib.MeshConfig, train_cfg: TrainConfig, workdir: str, *,
          operative_config: Optional[str] = None, hooks: Optional[Sequence] = None,
          extra_hooks: Sequence = ()) -> RunResult:
  """Trains (or resumes) in `workdir`. The operative config and the metrics files are written only once the
  configuration is valid and the initial state is chosen (a refused resume leaves the workdir as it was).
  `hooks` replace the default ones (`hooks.default_hooks`); `extra_hooks` run after them (a sweep's reporting)."""
  workdir = os.path.abspath(workdir)  # orbax needs absolute paths
  mesh = validate(model_cfg, data_cfg, mesh_cfg, train_cfg, workdir)
  run = _build(model_cfg, data_cfg, opt_cfg, mesh, train_cfg, workdir)
  hooks = list(hooks_lib.default_hooks(train_cfg, run.tasks) if hooks is None else hooks) + list(extra_hooks)
  try:
    with run.asm.activate(), PreemptionWatcher() as watcher:
      initial_state(run)
      if operative_config is not None:
        workdir_lib.write_operative_config(workdir, operative_config)
      run.logger = MetricsLogger(workdir, enabled=run.primary, total_steps=train_cfg.train_steps)
      run.window = Throughput(int(run.state.step))
      if run.primary:
        logging.info("model: %s", run.asm.model)
        logging.info("mesh %s over %d %s devices", dict(run.asm.mesh.shape), run.asm.mesh.size,
                     run.asm.mesh.devices.flat[0].platform)
        logging.info("%.3g FLOPs/token; peak %.3g FLOP/s; batch stages %s", run.flops_token, run.peak_total,
                     run.ramp.stages)
      preempted = _loop(run, hooks, watcher)
      if run.eval_metrics is None and not preempted:  # resumed at the end: evaluate the restored state
        hooks_lib.Evaluate()(run, int(run.state.step))
      run.checkpointer.wait()
      run.checkpointer.check_for_errors()
  except BaseException:
    try:  # let in-flight saves finish, but never hide the error that stopped training
      run.checkpointer.close()
    except Exception as close_error:  # pylint: disable=broad-except
      logging.error("while stopping: %s", close_error)
    raise
  finally:
    if run.logger is not None:
      run.logger.close()
    for hook in hooks:  # hooks that hold resources (the best-parameters checkpointer)
      if hasattr(hook, "close"):
        hook.close()
  run.checkpointer.close()
  return _result(run, preempted)
