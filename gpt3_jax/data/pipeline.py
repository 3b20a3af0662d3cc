"""The training stream: shuffled windows of a packed token stream, in global batches split across processes.

Windows: the stream is cut into windows of `seq_len + 1` tokens with stride `seq_len`, window i being
`tokens[i * seq_len : i * seq_len + seq_len + 1]`. Inputs are `window[:-1]`, targets `window[1:]`: every
token is an input exactly once per epoch and consecutive windows share one boundary token.

Order: a grain `MapDataset` over window indices, `.shuffle(seed).repeat()`. grain's shuffle maps a global
index to (epoch, index-in-epoch) and draws a fresh permutation per epoch (seed + epoch), so windows are
sampled without replacement within an epoch and each epoch has its own order. The user seed is first hashed
(`np.random.SeedSequence`), so runs with seeds s and s + 1 do not see the same orders one epoch apart.

Batches: the index stream is batched into GLOBAL batches of `global_batch_size` windows (a batch may straddle
an epoch boundary); process p keeps rows [p * local, (p + 1) * local) with local = global / process_count
and gathers only those windows. One process and N processes therefore train on identical global batches,
with no row on two processes.

State: the iterator's `get_state()` is a small JSON-serializable dict (the next batch index), restored by
`set_state()`; `iterator_state_to_json` / `iterator_state_from_json` round-trip it through a string, and
the dict itself can go to `orbax.checkpoint.args.JsonSave`.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import grain
import numpy as np


def num_windows(num_tokens: int, seq_len: int) -> int:
  """Number of full windows of seq_len + 1 tokens at stride seq_len."""
  return max(0, (num_tokens - 1) // seq_len)


def _window(tokens: np.ndarray, index: int, seq_len: int) -> np.ndarray:
  start = int(index) * seq_len
  return tokens[start:start + seq_len + 1]


def derived_seed(seed: int) -> int:
  """A 32-bit seed decorrelated from nearby user seeds (grain uses seed + epoch per epoch)."""
  return int(np.random.SeedSequence(seed).generate_state(1, dtype=np.uint32)[0])


def window_index_dataset(num_windows_: int, *, global_batch_size: int, seed: int) -> grain.MapDataset:
  """Infinite MapDataset of global batches of window indices (int64 arrays of length global_batch_size)."""
  return (grain.MapDataset.range(num_windows_)
          .shuffle(seed=derived_seed(seed))
          .repeat()
          .batch(global_batch_size, drop_remainder=True))


def train_iterator(tokens: np.ndarray, *, seq_len: int, global_batch_size: int, seed: int,
                   process_index: int = 0, process_count: int = 1,
                   num_threads: int = 2, prefetch: int = 4) -> grain.DatasetIterator:
  """This process's rows of every shuffled global batch, as np.int32 [global_batch_size // process_count, seq_len + 1].

  Args:
    tokens: the packed train token stream (e.g. a memmap).
    seq_len: model context n_ctx.
    global_batch_size: windows per optimizer step over all processes.
    seed: shuffle seed.
    process_index: this JAX process (jax.process_index()).
    process_count: number of JAX processes (jax.process_count()).
    num_threads: threads gathering batches ahead of the consumer.
    prefetch: batches read ahead.

  Returns:
    An infinite grain DatasetIterator with get_state() / set_state().

  Raises:
    ValueError: indivisible batch, bad process index, or fewer tokens than one window.
  """
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of "
                     f"process_count {process_count}.")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is outside [0, {process_count}).")
  n = num_windows(len(tokens), seq_len)
  if n == 0:
    raise ValueError(f"The corpus has {len(tokens)} tokens, fewer than one window of seq_len + 1 = "
                     f"{seq_len + 1}; use more data or a shorter seq_len.")
  local = global_batch_size // process_count
  lo, hi = process_index * local, (process_index + 1) * local

  def gather(indices: np.ndarray) -> np.ndarray:
    return np.stack([_window(tokens, i, seq_len) for i in indices[lo:hi]]).astype(np.int32)

  dataset = window_index_dataset(n, global_batch_size=global_batch_size, seed=seed).map(gather)
  return iter(dataset.to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)))


def eval_batches(tokens: np.ndarray, *, seq_len: int, batch_size: int, max_batches: int | None = None,
                 drop_remainder: bool = False) -> Iterator[np.ndarray]:
  """Validation windows in stream order (no shuffle), as np.int32 [batch, seq_len + 1].

  The ragged tail of the stream (shorter than a window) is dropped. The last batch holds the remaining
  windows (fewer than `batch_size`) unless `drop_remainder`. Call again for each evaluation.
  """
  n = num_windows(len(tokens), seq_len)
  emitted = 0
  for start in range(0, n, batch_size):
    if max_batches is not None and emitted >= max_batches:
      return
    stop = min(start + batch_size, n)
    if drop_remainder and stop - start < batch_size:
      return
    yield np.stack([_window(tokens, i, seq_len) for i in range(start, stop)]).astype(np.int32)
    emitted += 1


def unigram_cross_entropy(train_tokens: np.ndarray, eval_tokens: np.ndarray, vocab_size: int) -> float:
  """Cross-entropy (nats/token) of eval_tokens under the add-one-smoothed unigram model of train_tokens.

  p(v) = (count_train(v) + 1) / (len(train) + vocab_size); returns -mean(log p(eval token)). The baseline
  a language model must beat.
  """
  if len(eval_tokens) == 0:
    raise ValueError("unigram_cross_entropy needs at least one eval token.")
  train_counts = np.bincount(np.asarray(train_tokens), minlength=vocab_size)
  eval_counts = np.bincount(np.asarray(eval_tokens), minlength=vocab_size)
  if len(train_counts) > vocab_size or len(eval_counts) > vocab_size:
    raise ValueError(f"Token ids exceed vocab_size {vocab_size}.")
  log_p = np.log(train_counts + 1.0) - np.log(len(train_tokens) + vocab_size)
  return float(-(eval_counts * log_p).sum() / len(eval_tokens))


def iterator_state_to_json(state: dict[str, Any]) -> str:
  """Serializes `DatasetIterator.get_state()` (already JSON-compatible) to a string."""
  return json.dumps(state, sort_keys=True)


def iterator_state_from_json(text: str) -> dict[str, Any]:
  """Inverse of `iterator_state_to_json`, for `DatasetIterator.set_state()`."""
  return json.loads(text)
