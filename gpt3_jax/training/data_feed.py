"""Global training batches on the devices, from the data mixture's per-process rows."""

from __future__ import annotations

import jax
import numpy as np

from gpt3_jax.training.assembly import Assembly


class DataFeed:
  """Global batches of a ramp stage assembled from consecutive base batches of the data stream."""

  def __init__(self, data_iter, asm: Assembly, base_batch: int):
    self.data_iter = data_iter
    self.asm = asm
    self.base_batch = base_batch

  def next(self, batch_size: int) -> jax.Array:
    parts = [next(self.data_iter) for _ in range(batch_size // self.base_batch)]
    local = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return self.asm.place_batch(local)

  def skip(self, batches: int) -> None:
    for _ in range(batches):
      next(self.data_iter)

  def position(self) -> int:
    return self.data_iter.get_state()["next_index"]
