"""The pieces the training loop calls at their cadence: metrics logging, evaluation and checkpointing.

A hook is `every(cfg) -> int` plus `__call__(run, step)`; it runs after step `step` was dispatched when `step` is
a multiple of its cadence and at the last step. Adding a periodic evaluation is adding one hook to the list
that `default_hooks` returns (or that the caller passes to `trainer.train`).
"""

from __future__ import annotations

import math
import time

import jax
from absl import logging

from gpt3_jax.training import validation_loss


def log_step(run, record, values: dict) -> None:
  """Training metrics of an inspected step: TensorBoard, metrics.jsonl and the console line."""
  ramp = run.ramp
  tokens_s = run.window.tokens_per_s(ramp.tokens_before(record.step) - ramp.tokens_before(run.window.step))
  values.update(learning_rate=record.learning_rate, batch_size=float(record.batch_size), tokens_per_s=tokens_s,
                mfu=tokens_s * run.flops_token / run.peak_total if run.peak_total else 0.0,
                tokens_seen=float(ramp.tokens_before(record.step)), skipped_steps=float(run.loop.skipped_steps),
                **run.mixture.metrics(record.data_index))
  run.logger.write(record.step, values)
  run.logger.progress(record.step, values)
  run.window.reset(record.step)


class Evaluate:
  """Validation loss over every source of the mixture (and their weighted mean), outside the throughput."""

  def every(self, cfg) -> int:
    return cfg.eval_every

  def __call__(self, run, step: int) -> None:
    jax.block_until_ready(run.state)  # the step in flight is training time, not evaluation time
    start = time.perf_counter()
    run.eval_metrics = validation_loss.evaluate_sources(
        run.asm, run.state.params, run.corpus.streams, run.corpus.weights, batch_size=run.cfg.global_batch_size,
        max_batches=run.cfg.eval_batches)
    loss = run.eval_metrics["loss"]
    classifier = bool(run.asm.model.class_labels)  # its loss is per example: no perplexity
    run.logger.write(step, run.eval_metrics if classifier else {**run.eval_metrics,
                                                                 "perplexity": math.exp(min(loss, 50))}, prefix="eval")
    if run.primary and classifier:
      logging.info("eval at step %d: loss %.4f accuracy %.4f macro-F1 %.4f", step, loss,
                   run.eval_metrics["accuracy"], run.eval_metrics["macro_f1"])
    elif run.primary:
      logging.info("eval at step %d: loss %.4f perplexity %.2f", step, loss, math.exp(min(loss, 50)))
    run.window.exclude(time.perf_counter() - start)


class Checkpoint:
  """Saves the state, the data position and the loop state (asynchronously unless configured otherwise)."""

  def every(self, cfg) -> int:
    return cfg.checkpoint_every

  def __call__(self, run, step: int) -> None:
    run.save(step)


class TaskEval:
  """Zero- / few-shot tasks (gpt3_jax/evaluation) at their cadence: TensorBoard `fewshot/<task>/<K>shot/<metric>`
  and metrics.jsonl rows with split 'fewshot'; the newest results stay in `run.task_results`."""

  def __init__(self, tasks):
    self.tasks, self.evaluator = tasks, None

  def every(self, cfg) -> int:
    return cfg.task_eval_every or cfg.train_steps

  def __call__(self, run, step: int) -> None:
    from gpt3_jax.evaluation import runner
    jax.block_until_ready(run.state)
    start = time.perf_counter()
    if self.evaluator is None:  # built once: its compiled shapes serve every evaluation of the run
      self.evaluator = runner.Evaluator(run.asm.model, run.state.params, run.corpus.tokenizer, mesh=run.asm.mesh)
    else:
      self.evaluator.scorer.use(run.state.params)
    run.task_results = runner.evaluate_all(self.evaluator, self.tasks, run.cfg.task_eval_fewshot, seed=run.cfg.seed,
                                           limit=run.cfg.task_eval_limit)
    for task, by_k in run.task_results.items():
      for k, result in by_k.items():
        run.logger.write(step, {f"{task}/{k}shot/{m}": v["value"] for m, v in result["metrics"].items()},
                         prefix="fewshot")
    if run.primary:
      logging.info("few-shot tasks at step %d:\n%s", step, runner.format_table(run.task_results))
    run.window.exclude(time.perf_counter() - start)


def default_hooks(cfg, tasks=()):
  """Evaluation, checkpointing, the few-shot tasks and keeping the best parameters, as `cfg` configures."""
  from gpt3_jax.training.best_checkpoint import KeepBest
  return ([Evaluate(), Checkpoint()] + ([TaskEval(tasks)] if tasks else [])
          + ([KeepBest(cfg.keep_best_metric, cfg.keep_best_mode)] if cfg.keep_best_metric else []))
