"""The training loop's own state: fault counters and the loss history (saved with every checkpoint), and the
throughput window (not saved)."""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Any, Dict


@dataclasses.dataclass
class LoopState:
  """Saved in each checkpoint's metadata, so a resumed run detects spikes and counts faults as before."""

  history: collections.deque  # the last spike_window finite losses
  skipped_steps: int = 0
  spike_recoveries: int = 0
  consecutive_nonfinite: int = 0

  COUNTERS = ("skipped_steps", "spike_recoveries", "consecutive_nonfinite")

  @classmethod
  def from_saved(cls, saved: Dict[str, Any], window: int) -> LoopState:
    counters = saved.get("counters", {})
    return cls(history=collections.deque(saved.get("history", []), maxlen=max(1, window)),
               **{k: int(counters.get(k, 0)) for k in cls.COUNTERS})

  def to_saved(self) -> Dict[str, Any]:
    return {"counters": {k: getattr(self, k) for k in self.COUNTERS}, "history": list(self.history)}


class Throughput:
  """Tokens between two logged steps over the wall time in between, compilation and evaluation excluded.

  A step's metrics are read after the next step is dispatched, so a window ends when the host sees its last step
  done. A host thread that wakes late (a busy CPU) moves compute into the window before; two neighbouring windows
  still add up, and so does any window of several steps (log_every > 1)."""

  def __init__(self, step: int):
    self.reset(step)

  def reset(self, step: int) -> None:
    self.start, self.step, self.excluded = time.perf_counter(), step, 0.0

  def exclude(self, seconds: float) -> None:
    self.excluded += seconds

  def tokens_per_s(self, tokens: int) -> float:
    elapsed = time.perf_counter() - self.start - self.excluded
    return tokens / elapsed if elapsed > 0 else 0.0
