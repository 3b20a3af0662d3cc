"""A weighted mixture of token streams, random-access by global row: exact resume with any process count.

Rows: global batch b holds global rows g = b * global_batch_size + r. Each row is one window of
`seq_len + 1` tokens (stride `seq_len`, as in `pipeline`) from one source.

Which source: rows are grouped in blocks of `block_rows`. Block j gives source s exactly
`floor(block_rows * w_s)` rows plus the block's leftover rows, handed out by systematic sampling of the
fractional parts (`block_rows * w_s - floor(...)`) from one uniform draw; then the block's assignments are
shuffled. So every source's share is exactly its weight in expectation, and within one row of it in every
block. The draws come from a generator keyed on (seed, j): a block is a pure function of its index.

Which window: the k-th row assigned to source s reads window `order_s[k]`, where `order_s` is grain's
`MapDataset.range(n_s).shuffle(seed_s).repeat()`: a fresh permutation per epoch, so windows are drawn
without replacement within each of the source's epochs. k is the number of earlier rows given to s: the
per-block counts are cheap (one draw per block), so `k` for any row is computed without replaying the rows.

State: the iterator is grain's, over global batch indices, and its state is the next batch index. Each
process gathers only its rows [p * local, (p + 1) * local) of a global batch; the global stream does not
depend on the process count, so a checkpoint written with N processes resumes with any M dividing the batch.
A single source with weight 1 is the plain single-corpus stream.

Metrics: `metrics(step)` gives per-source tokens consumed and epochs elapsed after `step` batches.
"""

from __future__ import annotations

import functools
import threading
from typing import Sequence

import grain
import numpy as np

from gpt3_jax.data import pipeline

DEFAULT_BLOCK_ROWS = 1 << 14
_NUM_BATCHES = 1 << 40  # The stream is infinite; grain needs a length.


def _seed(*parts: int) -> int:
  """A 32-bit seed decorrelated from nearby inputs (grain reseeds each epoch with seed + epoch)."""
  return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint32)[0])


class Mixture:
  """The global order of a weighted mixture; see the module docstring."""

  def __init__(self, streams: Sequence[np.ndarray], weights: Sequence[float], *, seq_len: int,
               global_batch_size: int, seed: int, names: Sequence[str] | None = None,
               block_rows: int = DEFAULT_BLOCK_ROWS, constant_metrics: dict[str, float] | None = None):
    """Plans the mixture.

    Args:
      streams: packed token streams (memmaps), one per source.
      weights: non-negative sampling weights (normalized here), one per source.
      seq_len: model context; windows have seq_len + 1 tokens.
      global_batch_size: rows per global batch.
      seed: data-order seed.
      names: source names for metrics and errors (default: source0, source1, ...).
      block_rows: rows per assignment block.
      constant_metrics: added to every `metrics(step)` (e.g. skipped-document counts).

    Raises:
      ValueError: mismatched lengths, bad weights, or a weighted source shorter than one window.
    """
    names = list(names) if names is not None else [f"source{i}" for i in range(len(streams))]
    if not streams or len(weights) != len(streams) or len(names) != len(streams):
      raise ValueError(f"A mixture needs one weight and name per source: {len(streams)} sources, "
                       f"{len(weights)} weights, {len(names)} names.")
    w = np.asarray(weights, np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
      raise ValueError(f"Mixture weights {list(weights)} must be finite, non-negative, not all zero.")
    if global_batch_size <= 0:
      raise ValueError(f"global_batch_size must be positive, got {global_batch_size}.")
    self.weights = w / w.sum()
    self.names = names
    self.streams = list(streams)
    self.seq_len = seq_len
    self.global_batch_size = global_batch_size
    self.seed = seed
    self.block_rows = block_rows
    self.constant_metrics = dict(constant_metrics or {})
    self.num_windows = [pipeline.num_windows(len(t), seq_len) for t in streams]
    for name, n, weight, t in zip(names, self.num_windows, self.weights, streams):
      if n == 0 and weight > 0:
        raise ValueError(f"Source {name!r} has {len(t)} tokens, fewer than one window of seq_len + 1 = "
                         f"{seq_len + 1}; use more data, a shorter seq_len, or weight 0.")
    self._orders = [
        grain.MapDataset.range(max(n, 1)).shuffle(
            seed=_seed(seed) if i == 0 else _seed(seed, i)).repeat()
        for i, n in enumerate(self.num_windows)]
    self._assign_seed = _seed(seed, 0x6D6978)
    self._quota = np.floor(block_rows * self.weights).astype(np.int64)
    self._frac_cdf = np.cumsum(block_rows * self.weights - self._quota)
    self._last_weighted = int(np.flatnonzero(self.weights)[-1])
    self._counts_before = [np.zeros(len(streams), np.int64)]  # Per-source rows before block j.
    self._lock = threading.Lock()

  def _block_rng(self, j: int) -> np.random.Generator:
    return np.random.default_rng([self._assign_seed, j])

  def _block_counts(self, rng: np.random.Generator) -> np.ndarray:
    leftover = self.block_rows - int(self._quota.sum())
    points = rng.random() + np.arange(leftover)
    extra = np.searchsorted(self._frac_cdf, points, side="right")
    extra = np.minimum(extra, self._last_weighted)  # Guards against rounding at the top of the CDF.
    return self._quota + np.bincount(extra, minlength=len(self._quota))

  def _counts_before_block(self, j: int) -> np.ndarray:
    with self._lock:
      while len(self._counts_before) <= j:
        n = len(self._counts_before) - 1
        self._counts_before.append(self._counts_before[-1] + self._block_counts(self._block_rng(n)))
      return self._counts_before[j]

  @functools.lru_cache(maxsize=8)
  def _block(self, j: int) -> tuple[np.ndarray, np.ndarray]:
    """(source of each row of block j, index of the row among the block's rows of that source)."""
    rng = self._block_rng(j)
    counts = self._block_counts(rng)
    sources = np.repeat(np.arange(len(counts)), counts)
    rng.shuffle(sources)
    ranks = np.empty(len(sources), np.int64)
    for s in range(len(counts)):
      mask = sources == s
      ranks[mask] = np.arange(int(mask.sum()))
    return sources, ranks

  def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """(source, k) of global rows [start, stop): k-th row of that source since the start of training."""
    sources, ks = [], []
    for j in range(start // self.block_rows, (stop - 1) // self.block_rows + 1):
      lo = max(start, j * self.block_rows) - j * self.block_rows
      hi = min(stop, (j + 1) * self.block_rows) - j * self.block_rows
      src, rank = self._block(j)
      sources.append(src[lo:hi])
      ks.append(self._counts_before_block(j)[src[lo:hi]] + rank[lo:hi])
    return np.concatenate(sources), np.concatenate(ks)

  def rows_before(self, row: int) -> np.ndarray:
    """Rows given to each source among the first `row` global rows."""
    j, offset = divmod(row, self.block_rows)
    counts = self._counts_before_block(j).copy()
    if offset:
      counts += np.bincount(self._block(j)[0][:offset], minlength=len(counts))
    return counts

  def window(self, source: int, k: int) -> np.ndarray:
    """The window read by the k-th row of `source`."""
    start = int(self._orders[source][int(k)]) * self.seq_len
    return self.streams[source][start:start + self.seq_len + 1]

  def batch(self, index: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """Rows [lo, hi) of global batch `index`, as np.int32 [hi - lo, seq_len + 1]."""
    hi = self.global_batch_size if hi is None else hi
    first = index * self.global_batch_size
    sources, ks = self.rows(first + lo, first + hi)
    return np.stack([self.window(s, k) for s, k in zip(sources, ks)]).astype(np.int32)

  def iterator(self, *, process_index: int = 0, process_count: int = 1, num_threads: int = 2,
               prefetch: int = 4) -> grain.DatasetIterator:
    """This process's rows of every global batch; `get_state()` is {'next_index': next global batch}.

    Raises:
      ValueError: the batch does not split evenly over processes, or a bad process index.
    """
    if self.global_batch_size % process_count:
      raise ValueError(f"global_batch_size {self.global_batch_size} must be a positive multiple of "
                       f"process_count {process_count}.")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} is outside [0, {process_count}).")
    local = self.global_batch_size // process_count
    lo, hi = process_index * local, (process_index + 1) * local
    dataset = grain.MapDataset.range(_NUM_BATCHES).map(lambda b: self.batch(int(b), lo, hi))
    return iter(dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)))

  def metrics(self, step: int) -> dict[str, float]:
    """Per-source tokens consumed and epochs elapsed after `step` global batches."""
    counts = self.rows_before(step * self.global_batch_size)
    out = dict(self.constant_metrics)
    for name, count, n in zip(self.names, counts, self.num_windows):
      out[f"data/{name}/tokens"] = float(count * self.seq_len)
      out[f"data/{name}/epochs"] = float(count / n) if n else 0.0
    return out
