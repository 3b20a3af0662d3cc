"""The paper's batch-size ramp (Appendix B): linear from ~32k tokens to the full batch over the first tokens.

The linear target is quantized to power-of-two fractions of the full batch (full / 2^k, ..., full / 2, full), so
only a handful of step shapes is ever compiled. Every stage's batch is a whole number of *base* batches (the
smallest stage), so the data stream is read in base batches and consumed exactly once, whatever the stage.
Tokens seen before any step are exact integers, and the learning rate is evaluated at them.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from typing import List, Tuple


@dataclasses.dataclass(frozen=True)
class BatchRamp:
  """Batch size (sequences) per step.

  Attributes:
    full_batch: the global batch after the ramp.
    seq_len: tokens per sequence.
    ramp_tokens: tokens over which the linear ramp runs (0: no ramp).
    start_tokens: batch size in tokens at the start of the ramp (paper: 32k).
    granularity: every stage's batch is a multiple of this (the data-parallel size x microbatches).
  """

  full_batch: int
  seq_len: int
  ramp_tokens: float = 0.0
  start_tokens: float = 32768
  granularity: int = 1

  def __post_init__(self):
    if self.ramp_tokens > 0 and self.base_batch % self.granularity:
      raise ValueError(f"batch ramp: the smallest stage ({self.base_batch} sequences) is not a multiple of "
                       f"{self.granularity} (data-parallel size x microbatches); use a larger global_batch_size or "
                       f"batch_ramp_start_tokens")

  @property
  def stages(self) -> List[int]:
    """Stage batch sizes, smallest first: full / 2^k ... full, the smallest >= start_tokens / seq_len."""
    if self.ramp_tokens <= 0:
      return [self.full_batch]
    start = max(1, math.ceil(self.start_tokens / self.seq_len))
    sizes = [self.full_batch]
    while sizes[-1] % 2 == 0 and sizes[-1] // 2 >= start and (sizes[-1] // 2) % self.granularity == 0:
      sizes.append(sizes[-1] // 2)
    return sorted(sizes)

  @property
  def base_batch(self) -> int:
    return self.stages[0]

  def _stage_starts(self) -> List[Tuple[int, int, int]]:
    """(first step, tokens before that step, batch) for each stage."""
    stages = self.stages
    if len(stages) == 1:
      return [(0, 0, stages[0])]
    start_seq = self.start_tokens / self.seq_len
    out, step, tokens = [], 0, 0
    for i, batch in enumerate(stages):
      out.append((step, tokens, batch))
      if i + 1 < len(stages):
        nxt = stages[i + 1]
        # Token count at which the linear target reaches the next stage's batch.
        frac = (nxt - start_seq) / max(self.full_batch - start_seq, 1e-9)
        switch = max(0.0, frac) * self.ramp_tokens
        steps = max(0, math.ceil((switch - tokens) / (batch * self.seq_len)))
        step, tokens = step + steps, tokens + steps * batch * self.seq_len
    return out

  def batch_size(self, step: int) -> int:
    starts = self._stage_starts()
    i = bisect.bisect_right([s for s, _, _ in starts], step) - 1
    return starts[i][2]

  def tokens_before(self, step: int) -> int:
    """Exact number of tokens consumed by steps 0 .. step-1."""
    starts = self._stage_starts()
    i = bisect.bisect_right([s for s, _, _ in starts], step) - 1
    first, tokens, batch = starts[i]
    return tokens + (step - first) * batch * self.seq_len
