"""Windows of a packed token stream, evaluation batches, and the unigram baseline.

Windows: the stream is cut into windows of `seq_len + 1` tokens with stride `seq_len`, window i being
`tokens[i * seq_len : i * seq_len + seq_len + 1]`. Inputs are `window[:-1]`, targets `window[1:]`: every
token is an input exactly once per epoch and consecutive windows share one boundary token.

The shuffled training stream over these windows (per-epoch permutations, global batches, each process's rows,
exact resume) is `mixture.Mixture`; one source with weight 1 is the plain single-corpus stream.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np


def num_windows(num_tokens: int, seq_len: int) -> int:
  """Number of full windows of seq_len + 1 tokens at stride seq_len."""
  return max(0, (num_tokens - 1) // seq_len)


def _window(tokens: np.ndarray, index: int, seq_len: int) -> np.ndarray:
  start = int(index) * seq_len
  return tokens[start:start + seq_len + 1]


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
