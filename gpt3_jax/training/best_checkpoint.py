"""Keep the best parameters by a chosen metric: `TrainConfig.keep_best_metric` (docs/finetuning.md).

After each evaluation that reports the metric, parameters better than every earlier evaluation's are saved to
<workdir>/best/checkpoints/<step> (one kept), with the metric, its value and the step in the checkpoint's meta.
`<workdir>/best` reads like a workdir: `--workdir=RUN/best` for --mode=eval / sample / convert, or
`TrainConfig.init_from = 'RUN/best'`. A resumed run reads the best value back from there, so a kill between an
evaluation and the next checkpoint changes nothing (the repeated evaluation is not better than itself).

Metric names are the logged ones: 'loss' (and '<source>/loss'), a classifier's 'accuracy' and 'macro_f1', or a
few-shot task's 'fewshot/<task>/<K>shot/<metric>' (e.g. 'fewshot/package_of/0shot/acc').
"""

from __future__ import annotations

import os
import re
from typing import Optional

from absl import logging

from gpt3_jax import workdir as workdir_lib
from gpt3_jax.config_types import check_choice
from gpt3_jax.training.checkpointing import CheckpointConfig, Checkpointer

MODES = ("min", "max")
_FEWSHOT = re.compile(r"fewshot/(?P<task>.+)/(?P<k>\d+)shot/(?P<metric>[^/]+)")


def mode_of(metric: str, mode: str) -> str:
  """'min' for a loss, 'max' otherwise, unless `mode` says."""
  return mode or ("min" if metric.endswith("loss") else "max")


def check(train_cfg, model_cfg) -> None:
  """One-line errors for a metric the run will never report, before anything is written."""
  metric, mode = train_cfg.keep_best_metric, train_cfg.keep_best_mode
  if not metric:
    return
  check_choice("TrainConfig", "keep_best_mode", mode, ("",) + MODES)  # '': min for a loss, else max
  if (m := _FEWSHOT.fullmatch(metric)) is not None:
    if m["task"] not in train_cfg.task_eval_tasks or int(m["k"]) not in train_cfg.task_eval_fewshot:
      raise ValueError(f"TrainConfig.keep_best_metric={metric!r} needs task {m['task']!r} in "
                       f"TrainConfig.task_eval_tasks {tuple(train_cfg.task_eval_tasks)} and K={m['k']} in "
                       f"task_eval_fewshot {tuple(train_cfg.task_eval_fewshot)}")
    return
  if metric in ("accuracy", "macro_f1") and not model_cfg.class_labels:
    raise ValueError(f"TrainConfig.keep_best_metric={metric!r} is a classifier's metric (FinetuneConfig.task = "
                     f"'classify'); use 'loss' for this run")
  if metric not in ("loss", "accuracy", "macro_f1") and not metric.endswith("/loss"):
    raise ValueError(f"TrainConfig.keep_best_metric={metric!r} is not a metric the run reports; use 'loss', "
                     f"'<source>/loss', 'accuracy', 'macro_f1' or 'fewshot/<task>/<K>shot/<metric>'")


def value_of(run, metric: str) -> Optional[float]:
  """The metric's value from the run's newest evaluation, or None when it has none."""
  if (m := _FEWSHOT.fullmatch(metric)) is not None:
    result = (run.task_results or {}).get(m["task"], {}).get(int(m["k"]), {})
    entry = result.get("metrics", {}).get(m["metric"])
    if entry is None and result:
      raise ValueError(f"TrainConfig.keep_best_metric={metric!r}: task {m['task']!r} reports "
                       f"{sorted(result.get('metrics', {}))}")
    return None if entry is None else float(entry["value"])
  metrics = run.eval_metrics or {}
  if metric not in metrics and metrics:
    raise ValueError(f"TrainConfig.keep_best_metric={metric!r}: the evaluation reports {sorted(metrics)}")
  return metrics.get(metric)


class KeepBest:
  """A hook at the cadence of the metric's evaluation (run after it): saves the parameters when they improve."""

  def __init__(self, metric: str, mode: str):
    self.metric, self.mode = metric, mode_of(metric, mode)
    self.checkpointer, self.best = None, None

  def every(self, cfg) -> int:
    return (cfg.task_eval_every or cfg.train_steps) if _FEWSHOT.fullmatch(self.metric) else cfg.eval_every

  def _open(self, run) -> None:
    run_dir = os.path.dirname(run.checkpointer.directory.rstrip(os.sep))
    directory = workdir_lib.checkpoints_dir(os.path.join(run_dir, workdir_lib.BEST))
    self.checkpointer = Checkpointer(directory, CheckpointConfig(
        every_steps=1, keep=1, async_save=run.cfg.async_checkpointing))
    steps = self.checkpointer.all_steps()
    if steps:
      saved = self.checkpointer.restore_meta(steps[-1]).get("best", {})
      if saved.get("metric") == self.metric:
        self.best, run.best = float(saved["value"]), saved

  def better(self, value: float) -> bool:
    return self.best is None or (value < self.best if self.mode == "min" else value > self.best)

  def __call__(self, run, step: int) -> None:
    value = value_of(run, self.metric)
    if value is None:
      return
    if self.checkpointer is None:
      self._open(run)
    if not self.better(value):
      return
    self.best = value
    meta = {**run.meta, "best": {"metric": self.metric, "value": value, "step": step, "mode": self.mode}}
    self.checkpointer.save(step, {"params": run.state.params}, {}, meta)
    run.best = meta["best"]
    if run.primary:
      logging.info("best %s so far: %.4f at step %d (saved to %s)", self.metric, value, step,
                   self.checkpointer.directory)

  def close(self) -> None:
    if self.checkpointer is not None:
      self.checkpointer.close()
