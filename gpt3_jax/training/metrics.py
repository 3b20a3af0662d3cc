"""Metrics sinks: TensorBoard event files, metrics.jsonl and a console progress line (process 0 only)."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Dict, List, Optional, Tuple

from absl import logging


def format_duration(seconds: float) -> str:
  seconds = max(0, int(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def read_metrics(workdir: str) -> Dict[str, Dict[str, Tuple[List[int], List[float]]]]:
  """metrics.jsonl of `workdir` as {split: {metric: (steps, values)}} in step order; a step written twice (a run
  resumed from an earlier checkpoint) keeps its last value. Empty when the run has written nothing."""
  by_step: Dict[str, Dict[str, Dict[int, float]]] = {}
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      if not line.strip():
        continue
      row = json.loads(line)
      split = by_step.setdefault(row.pop("split", "train"), {})
      step = row.pop("step")
      for key, value in row.items():
        split.setdefault(key, {})[step] = value
  return {split: {key: (sorted(v), [v[s] for s in sorted(v)]) for key, v in metrics.items()}
          for split, metrics in by_step.items()}


class MetricsLogger:
  """Writes scalars to TensorBoard (tensorboardX) and metrics.jsonl in `workdir`; no-op when not primary."""

  def __init__(self, workdir: str, *, enabled: bool = True, total_steps: Optional[int] = None):
    self.enabled = enabled
    self.total_steps = total_steps
    self._start = time.perf_counter()
    self._start_step: Optional[int] = None
    if enabled:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"))
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")

  def write(self, step: int, scalars: Dict[str, float], *, prefix: str = "train") -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in scalars.items()}
    for key, value in clean.items():
      self._tb.add_scalar(f"{prefix}/{key}", value, step)
    self._jsonl.write(json.dumps({"step": step, "split": prefix, **clean}) + "\n")
    self._jsonl.flush()
    self._tb.flush()

  def progress(self, step: int, scalars: Dict[str, float]) -> str:
    """One console line: step/total, ETA and the latest numbers."""
    if self._start_step is None:
      self._start_step, self._start = step, time.perf_counter()
    line = f"step {step}" + (f"/{self.total_steps}" if self.total_steps else "")
    done = step - self._start_step
    if self.total_steps and done > 0:
      eta = (time.perf_counter() - self._start) / done * (self.total_steps - step)
      line += f" | ETA {format_duration(eta)}"
    for key, value in scalars.items():
      if isinstance(value, float) and (abs(value) >= 1e4 or (0 < abs(value) < 1e-2)) and math.isfinite(value):
        line += f" | {key} {value:.3e}"
      else:
        line += f" | {key} {value:.4g}" if isinstance(value, float) else f" | {key} {value}"
    if self.enabled:
      logging.info("%s", line)
    return line

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()
