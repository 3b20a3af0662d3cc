"""Training through faults: kills and preemption, damaged checkpoints, write failures, non-finite steps, loss
spikes, and the batch-size ramp. Faults are injected for real (signals to a training subprocess, truncated files,
a checkpoint directory replaced by a file, batches of out-of-vocabulary ids)."""

import json
import os
import shutil
import sys

import jax
import numpy as np
import pytest

import tiny_configs as tc
from gpt3_jax.training import assembly, batch_ramp, checkpointing, data_feed, guards, trainer
from gpt3_jax.training import optimizer as opt_lib
from gpt3_jax.parallel import mesh as mesh_lib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
import fault_injection  # noqa: E402

BAD_ID = 10**6  # beyond the embedding table: jnp.take fills NaN, the loss is NaN


def _rows(workdir, split="train"):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["split"] == split]


@pytest.fixture
def inject(monkeypatch):
  """inject({call_number: fn(batch) -> batch}): rewrites chosen global batches the trainer feeds (1-based)."""

  def install(rewrites):
    calls = {"n": 0}
    original = data_feed.DataFeed.next

    def next_batch(self, batch_size):
      batch = original(self, batch_size)
      calls["n"] += 1
      calls.setdefault("fed", []).append(np.asarray(batch))
      if calls["n"] in rewrites:
        batch = jax.device_put(rewrites[calls["n"]](np.asarray(batch)), batch.sharding)
      return batch

    monkeypatch.setattr(data_feed.DataFeed, "next", next_batch)
    return calls

  return install


def test_nonfinite_step_changes_nothing_but_the_step():
  mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(shape=(1, 1, 1)), devices=jax.devices()[:1])
  cfg = tc.MODEL.replace(vocab_size=128)
  asm = assembly.assemble(cfg, opt_lib.OptimizerConfig(), mesh, seq_len=cfg.n_ctx)
  with asm.activate():
    state = asm.fresh_state(seed=0)
    before = jax.device_get(state)
    step = asm.train_step
    batch = np.ones((4, cfg.n_ctx + 1), np.int32)
    batch[1, 3] = BAD_ID
    state, metrics = step(state, batch, np.float32(1e-3))
    assert not np.isfinite(float(metrics["loss"])) and float(metrics["skipped"]) == 1.0
    assert int(state.step) == 1
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), before.params)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.opt_state), before.opt_state)
    state, metrics = step(state, np.ones((4, cfg.n_ctx + 1), np.int32), np.float32(1e-3))
    assert float(metrics["skipped"]) == 0.0 and np.isfinite(float(metrics["loss"]))


def test_consecutive_nonfinite_steps_stop_the_run(inject, tiny_text_dir, tiny_data_dir, tmp_path):
  poison = lambda b: np.full_like(b, BAD_ID)
  inject({4: poison, 5: poison, 6: poison})
  with pytest.raises(guards.NonFiniteLossError, match=r"3 consecutive steps .*\(steps 4-6\).*newest checkpoint \(step 6\) holds the parameters of step 3"):
    trainer.train(tc.MODEL, tc.data(tiny_text_dir, tiny_data_dir), tc.OPTIMIZER, tc.MESH,
                  tc.train(train_steps=10, max_consecutive_nonfinite=3), str(tmp_path))
  rows = _rows(str(tmp_path))
  assert [r["skipped"] for r in rows if r["step"] in (4, 5)] == [1.0, 1.0]
  assert rows[-1]["skipped_steps"] == 2.0  # step 6 raised before it was logged
  assert {"2"} <= set(os.listdir(tmp_path / "checkpoints"))


def test_isolated_nonfinite_step_is_skipped_and_training_continues(inject, tiny_text_dir, tiny_data_dir, tmp_path):
  inject({3: lambda b: np.full_like(b, BAD_ID)})
  summary = trainer.train(tc.MODEL, tc.data(tiny_text_dir, tiny_data_dir), tc.OPTIMIZER, tc.MESH,
                          tc.train(train_steps=5), str(tmp_path))
  assert summary.skipped_steps == 1 and summary.step == 5 and np.isfinite(summary.eval_loss)


def test_loss_spike_restores_and_skips(inject, tiny_text_dir, tiny_data_dir, tmp_path):
  """A batch of uniformly random tokens has an expected loss >= ln(vocab) = 6.24 (cross-entropy against the
  uniform distribution), far above the ~5.2 the model reaches by then; the run goes back to the checkpoint
  before the spike, skips batches, logs the event and finishes."""
  calls = inject({11: lambda b: np.random.default_rng(0).integers(0, 512, b.shape).astype(b.dtype)})
  fast = tc.OPTIMIZER.__class__(peak_learning_rate=1e-2, warmup_tokens=256, decay_tokens=100_000)
  summary = trainer.train(tc.MODEL, tc.data(tiny_text_dir, tiny_data_dir), fast, tc.MESH,
                          tc.train(train_steps=13, spike_factor=1.15, spike_window=3, spike_skip_batches=2,
                                   checkpoint_every=1, eval_every=100), str(tmp_path))
  events = _rows(str(tmp_path), "event")
  assert len(events) == 1 and events[0]["spike_step"] == 11.0, " ".join(f"{r['step']}:{r['loss']:.2f}" for r in _rows(str(tmp_path)))
  assert events[0]["restored_step"] == 10.0 and events[0]["skipped_batches"] == 2.0
  assert summary.spike_recoveries == 1 and summary.step == 13
  # 11 batches fed before the spike was read (the 12th was in flight), 2 skipped, then steps 11..13 again.
  assert calls["n"] == 12 + 3
  # Step 11's checkpoint (written before its loss was read) belongs to the spiking trajectory: set aside.
  assert [name.split("-")[0] for name in os.listdir(tmp_path / "checkpoints_abandoned")] == ["11"]


def test_checkpoint_write_failure_stops_training(inject, tiny_text_dir, tiny_data_dir, tmp_path):
  def break_checkpoint_dir(batch):
    ckpt = tmp_path / "checkpoints"
    shutil.rmtree(ckpt)
    ckpt.write_text("not a directory")  # every later save fails (root ignores permissions; this it cannot)
    return batch

  inject({3: break_checkpoint_dir})
  with pytest.raises(checkpointing.CheckpointWriteError, match="checkpoint"):
    trainer.train(tc.MODEL, tc.data(tiny_text_dir, tiny_data_dir), tc.OPTIMIZER, tc.MESH,
                  tc.train(train_steps=50, checkpoint_every=1, async_checkpointing=False), str(tmp_path))
  assert max(r["step"] for r in _rows(str(tmp_path))) <= 4  # stopped at once, not after 50 steps


def test_resume_with_other_tokenizer_vocab_is_refused(tiny_text_dir, tiny_data_dir, tmp_path):
  trainer.train(tc.MODEL, tc.data(tiny_text_dir, tiny_data_dir), tc.OPTIMIZER, tc.MESH, tc.train(train_steps=2),
                str(tmp_path))
  before = sorted(os.listdir(tmp_path / "checkpoints"))
  other = tc.data(tiny_text_dir, tiny_data_dir).__class__(**{**tc.data(tiny_text_dir, tiny_data_dir).__dict__,
                                                              "vocab_size": 640})
  with pytest.raises(ValueError, match="ModelConfig.vocab_size=512"):
    trainer.train(tc.MODEL, other, tc.OPTIMIZER, tc.MESH, tc.train(train_steps=4), str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == before  # refused, nothing moved or loaded


@pytest.mark.slow
def test_kills_preemption_and_damage_resume_bit_exact(tmp_path):
  """SIGKILL at random points (often inside an async checkpoint write), one SIGTERM, one truncated newest
  checkpoint: every logged loss equals the uninterrupted run's exactly."""
  text_dir = fault_injection.make_corpus(str(tmp_path / "corpus"))
  flags = fault_injection.tiny_flags(text_dir, str(tmp_path / "data"), steps=10)
  with open(tmp_path / "log.txt", "w") as log:
    reference = fault_injection.run_uninterrupted(flags, str(tmp_path / "a"), log)
    result = fault_injection.run_with_faults(flags, str(tmp_path / "b"), steps=10, kills=3, log=log, seed=1)
  log_text = (tmp_path / "log.txt").read_text()
  assert result["faults"] == 4
  assert "received SIGTERM" in log_text and "is damaged" in log_text
  assert os.listdir(tmp_path / "b" / "checkpoints_damaged")
  assert fault_injection.compare(reference, fault_injection.logged_losses(str(tmp_path / "b"))) == 0.0
  losses = [reference[s] for s in sorted(reference)]
  assert losses[0] - min(losses) > 0.05  # the learning rate trains: a lost or repeated update would change losses


# --- the batch-size ramp -------------------------------------------------------------------------------------


def test_ramp_stages_and_tokens():
  ramp = batch_ramp.BatchRamp(full_batch=512, seq_len=2048, ramp_tokens=4e9, start_tokens=32768)
  assert ramp.stages == [16, 32, 64, 128, 256, 512]  # 16 x 2048 = 32k tokens
  assert ramp.batch_size(0) == 16
  tokens = [ramp.tokens_before(s) for s in range(0, 200_000, 997)]
  assert tokens == sorted(tokens)
  # The stage in force at t tokens never exceeds the linear target, and doubles when the target doubles.
  for step in range(0, 200_000, 1009):
    t = ramp.tokens_before(step)
    target = 16 + (512 - 16) * min(t / 4e9, 1.0)
    assert ramp.batch_size(step) <= max(target, 16)
    assert ramp.batch_size(step) * 2 > min(target, 512) or ramp.batch_size(step) == 512
  # Exact accounting: tokens before step s + this step's batch = tokens before step s + 1.
  for step in (0, 5, 10_000, 60_000, 120_000):
    assert ramp.tokens_before(step + 1) - ramp.tokens_before(step) == ramp.batch_size(step) * 2048
  assert ramp.batch_size(10**7) == 512


def test_no_ramp_is_constant():
  ramp = batch_ramp.BatchRamp(full_batch=8, seq_len=32)
  assert ramp.stages == [8] and ramp.batch_size(100) == 8 and ramp.tokens_before(100) == 100 * 8 * 32


def test_ramp_run_consumes_the_stream_once_with_lr_by_tokens(inject, tiny_text_dir, tiny_data_dir, tmp_path):
  ramp_cfg = dict(batch_ramp_tokens=512, batch_ramp_start_tokens=64)  # 2 -> 4 -> 8 sequences of 32 tokens
  calls = inject({})
  trainer.train(tc.MODEL, tc.data(tiny_text_dir, tiny_data_dir), tc.OPTIMIZER, tc.MESH,
                tc.train(train_steps=8, eval_every=100, **ramp_cfg), str(tmp_path))
  seen = calls["fed"]
  ramp = batch_ramp.BatchRamp(full_batch=8, seq_len=32, ramp_tokens=ramp_cfg["batch_ramp_tokens"],
                              start_tokens=64)
  assert [b.shape[0] for b in seen] == [ramp.batch_size(s) for s in range(8)]
  assert [b.shape[0] for b in seen] == [2, 2, 2, 4, 4, 4, 8, 8]  # it really ramps, in three stages
  # Exactly once: the rows fed are the first windows of an unramped stream with base batch 2, in order.
  from gpt3_jax.data import corpus as corpus_lib
  corpus = corpus_lib.prepare_corpus(tc.data(tiny_text_dir, tiny_data_dir))
  stream = corpus.train_iterator(seq_len=32, global_batch_size=2, seed=0)
  expected = np.concatenate([next(stream) for _ in range(sum(b.shape[0] for b in seen) // 2)])
  np.testing.assert_array_equal(np.concatenate(seen), expected)
  rows = _rows(str(tmp_path))
  assert [r["step"] for r in rows] == list(range(1, 9))
  for row in rows:
    assert row["tokens_seen"] == ramp.tokens_before(row["step"])
    assert row["batch_size"] == ramp.batch_size(row["step"] - 1)
    assert row["learning_rate"] == pytest.approx(
        float(opt_lib.learning_rate_at_tokens(tc.OPTIMIZER, ramp.tokens_before(row["step"] - 1))))


def test_restore_errors_that_are_not_damage_move_nothing(tmp_path):
  """Every checkpoint failing (here: a target of another structure) is raised, not taken for damage; a newer
  checkpoint failing while an older one restores is damage and is set aside."""
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), checkpointing.CheckpointConfig(async_save=False))
  tree = {"w": np.arange(4096, dtype=np.float32)}
  for step in (1, 2):
    ckpt.save(step, jax.tree.map(lambda x: x * step, tree), {"next_index": step}, {"step": step})
  wrong = {"w": jax.ShapeDtypeStruct((7,), np.float32), "extra": jax.ShapeDtypeStruct((2,), np.float32)}
  with pytest.raises(checkpointing.CheckpointRestoreError, match="no checkpoint .* restores"):
    ckpt.restore_newest_good(wrong)
  assert ckpt.all_steps() == [1, 2] and not (tmp_path / "checkpoints_damaged").exists()
  target = {"w": jax.ShapeDtypeStruct((4096,), np.float32)}
  fault_injection.damage_newest_checkpoint(str(tmp_path))
  step, state, data_state, _ = ckpt.restore_newest_good(target)
  assert step == 1 and data_state == {"next_index": 1}
  np.testing.assert_array_equal(state["w"], tree["w"])
  assert ckpt.all_steps() == [1] and len(os.listdir(tmp_path / "checkpoints_damaged")) == 1
  ckpt.close()


def test_spike_seen_at_preemption_is_recovered_before_the_final_save(inject, monkeypatch, tiny_text_dir,
                                                                     tiny_data_dir, tmp_path):
  """The step being saved for a preemption spiked: its checkpoint is set aside, the run rolls back, skips the
  batches, and only then saves and stops."""
  inject({11: lambda b: np.random.default_rng(0).integers(0, 512, b.shape).astype(b.dtype)})
  monkeypatch.setattr(trainer.PreemptionWatcher, "should_stop", lambda self, step: step >= 11)
  fast = tc.OPTIMIZER.__class__(peak_learning_rate=1e-2, warmup_tokens=256, decay_tokens=100_000)
  summary = trainer.train(tc.MODEL, tc.data(tiny_text_dir, tiny_data_dir), fast, tc.MESH,
                          tc.train(train_steps=20, spike_factor=1.15, spike_window=3, spike_skip_batches=2,
                                   checkpoint_every=1, eval_every=100), str(tmp_path))
  assert summary.preempted and summary.spike_recoveries == 1 and summary.step == 11
  assert [name.split("-")[0] for name in os.listdir(tmp_path / "checkpoints_abandoned")] == ["11"]
  assert max(int(s) for s in os.listdir(tmp_path / "checkpoints")) == 11  # re-done after the rollback
