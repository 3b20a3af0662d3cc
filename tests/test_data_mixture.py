"""Tests of the weighted mixture: weights, epochs without replacement, exact resume, process sharding."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gpt3_jax.data import mixture

SEQ = 4
# Three sources whose tokens tell them apart: source s holds ids s * 10000 + position.
SIZES = (4001, 801, 2001)  # 1000, 200 and 500 windows.


def _streams():
  return [(np.arange(n) + s * 10000).astype(np.uint16) for s, n in enumerate(SIZES)]


def _mix(weights=(0.6, 0.3, 0.1), batch=16, seed=5, block_rows=64):
  return mixture.Mixture(_streams(), weights, seq_len=SEQ, global_batch_size=batch, seed=seed,
                         names=["a", "b", "c"], block_rows=block_rows)


def _ids(batch):
  """(source, window index) of each row."""
  return [(int(r[0]) // 10000, (int(r[0]) % 10000) // SEQ) for r in batch]


def test_rows_are_windows_of_their_source():
  m = _mix()
  streams = _streams()
  for row in m.batch(3):
    s, w = int(row[0]) // 10000, (int(row[0]) % 10000) // SEQ
    np.testing.assert_array_equal(row, streams[s][w * SEQ:w * SEQ + SEQ + 1])


def test_weights_hold_per_block_and_in_expectation():
  m = _mix(block_rows=64)
  w = np.array([0.6, 0.3, 0.1])
  # Every block of 64 rows is within one row of 64 * w.
  for j in range(50):
    counts = np.bincount(m._block(j)[0], minlength=3)  # pylint: disable=protected-access
    assert counts.sum() == 64 and np.all(np.abs(counts - 64 * w) < 1), counts
  # The fractional parts (38.4, 19.2, 6.4) are drawn so that the mean over many blocks is exact.
  # Mean rows per block vs 64 * w = (38.4, 19.2, 6.4): the standard error over 4000 blocks is < 0.01.
  total = m.rows_before(64 * 4000)
  np.testing.assert_allclose(total / 4000, 64 * w, atol=0.05)
  assert m.rows_before(64 * 4000).sum() == 64 * 4000


def test_each_source_is_drawn_without_replacement_within_its_epochs():
  m = _mix(batch=32)
  by_source = {0: [], 1: [], 2: []}
  for b in range(60):  # 1920 rows: ~3 epochs of b (200 windows), ~1 of a, ~0.4 of c.
    for s, w in _ids(m.batch(b)):
      by_source[s].append(w)
  windows = [1000, 200, 500]
  for s, seq in by_source.items():
    full = len(seq) // windows[s]
    for e in range(full):
      assert sorted(seq[e * windows[s]:(e + 1) * windows[s]]) == list(range(windows[s])), (s, e)
    rest = seq[full * windows[s]:]
    assert len(set(rest)) == len(rest)
  assert len(by_source[1]) // 200 >= 2
  epochs = [by_source[1][e * 200:(e + 1) * 200] for e in range(2)]
  assert epochs[0] != epochs[1]  # A fresh order each epoch.


def test_metrics_count_tokens_and_epochs():
  m = _mix(batch=32)
  rows = np.zeros(3, np.int64)
  for b in range(10):
    for s, _ in _ids(m.batch(b)):
      rows[s] += 1
  got = m.metrics(10)
  for i, name in enumerate("abc"):
    assert got[f"data/{name}/tokens"] == rows[i] * SEQ
    assert got[f"data/{name}/epochs"] == pytest.approx(rows[i] / (SIZES[i] // SEQ))
  assert m.metrics(0)["data/a/tokens"] == 0


def test_resume_is_exact_batch_for_batch():
  m = _mix()
  it = m.iterator()
  for _ in range(7):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it) for _ in range(40)]
  fresh = _mix().iterator()  # A new process: nothing cached.
  fresh.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(fresh), want)


def test_processes_read_disjoint_shares_whose_union_is_the_stream():
  full = _mix(batch=12).iterator()
  shards = [_mix(batch=12).iterator(process_index=p, process_count=3) for p in range(3)]
  for _ in range(15):
    parts = [next(s) for s in shards]
    assert all(p.shape == (4, SEQ + 1) for p in parts)
    np.testing.assert_array_equal(np.concatenate(parts), next(full))


@pytest.mark.parametrize("before,after", [(2, 1), (2, 4), (4, 3)])
def test_process_count_may_change_on_restore(before, after):
  batch = 12
  reference = _mix(batch=batch).iterator()
  expected = [next(reference) for _ in range(9)]
  olds = [_mix(batch=batch).iterator(process_index=p, process_count=before) for p in range(before)]
  for _ in range(5):
    for it in olds:
      next(it)
  state = olds[0].get_state()
  assert all(it.get_state() == state for it in olds)  # The state is global: any process's will do.
  news = [_mix(batch=batch).iterator(process_index=p, process_count=after) for p in range(after)]
  for it in news:
    it.set_state(state)
  for want in expected[5:]:
    np.testing.assert_array_equal(np.concatenate([next(it) for it in news]), want)


def test_zero_weight_source_is_never_read_and_errors_are_clear():
  m = _mix(weights=(1.0, 0.0, 1.0))
  assert all(s != 1 for b in range(10) for s, _ in _ids(m.batch(b)))
  with pytest.raises(ValueError, match="weights"):
    _mix(weights=(0.0, 0.0, 0.0))
  with pytest.raises(ValueError, match="one weight"):
    _mix(weights=(1.0, 1.0))
  with pytest.raises(ValueError, match="'tiny'.*fewer than one window"):
    mixture.Mixture([np.arange(3, dtype=np.uint16)], [1.0], seq_len=SEQ, global_batch_size=2, seed=0,
                    names=["tiny"])
  with pytest.raises(ValueError, match="process_count 5"):
    _mix(batch=12).iterator(process_count=5)
