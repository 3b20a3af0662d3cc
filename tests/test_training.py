"""End-to-end training: resume equality, the files a run writes, and fail-fast bad input."""

import glob
import json
import math
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

import tiny_configs as tc
from gpt3_jax import configs
from gpt3_jax.training import trainer, validation
from gpt3_jax.training.run_result import RunResult

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


@pytest.fixture(scope="module")
def uninterrupted(tiny_text_dir, tiny_data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  summary = trainer.train(tc.MODEL, tc.data(tiny_text_dir, tiny_data_dir), tc.OPTIMIZER, tc.MESH,
                          tc.train(train_steps=6), workdir)
  return workdir, summary


def test_resume_equals_uninterrupted(uninterrupted, tiny_text_dir, tiny_data_dir, tmp_path):
  """3 steps, stop, restart to 6 steps == 6 steps straight: identical losses (bit-for-bit on CPU)."""
  full_dir, _ = uninterrupted
  data = tc.data(tiny_text_dir, tiny_data_dir)
  trainer.train(tc.MODEL, data, tc.OPTIMIZER, tc.MESH, tc.train(train_steps=3, checkpoint_every=3), str(tmp_path))
  trainer.train(tc.MODEL, data, tc.OPTIMIZER, tc.MESH, tc.train(train_steps=6, checkpoint_every=3), str(tmp_path))
  full, resumed = _losses(full_dir), _losses(str(tmp_path))
  assert sorted(full) == sorted(resumed) == [1, 2, 3, 4, 5, 6]
  assert [resumed[s] for s in range(1, 7)] == [full[s] for s in range(1, 7)]


def test_training_learns_and_writes_outputs(uninterrupted):
  workdir, summary = uninterrupted
  losses = _losses(workdir)
  assert losses[6] < losses[1] - 0.1, losses  # it learns something in 6 steps
  assert summary.eval_loss < math.log(512)  # better than uniform over the vocabulary
  assert {"4", "6"} <= set(os.listdir(os.path.join(workdir, "checkpoints")))
  assert glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  train_row = next(r for r in rows if r["split"] == "train")
  assert {"loss", "learning_rate", "grad_norm", "tokens_per_s", "mfu"} <= set(train_row)
  assert any(r["split"] == "eval" and "perplexity" in r for r in rows)
  # What the windows exclude is checked in test_throughput: one window's tokens/s is too noisy here for it.
  assert all(0 < r["tokens_per_s"] < math.inf for r in rows if r["split"] == "train"), rows


def test_tensorboard_events_are_readable(uninterrupted):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  workdir, _ = uninterrupted
  acc = EventAccumulator(os.path.join(workdir, "tensorboard"))
  acc.Reload()
  assert "train/loss" in acc.Tags()["scalars"]
  assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]


def test_resume_with_changed_model_is_refused(uninterrupted, tiny_text_dir, tiny_data_dir):
  workdir, _ = uninterrupted
  with pytest.raises(ValueError, match="ModelConfig.d_model"):
    trainer.train(tc.MODEL.replace(d_model=48), tc.data(tiny_text_dir, tiny_data_dir), tc.OPTIMIZER, tc.MESH,
                  tc.train(train_steps=8), workdir)


@pytest.mark.parametrize("change, message", [
    (dict(global_batch_size=0), "TrainConfig.global_batch_size must be positive, got 0; e.g. "),
    (dict(num_microbatches=3), "num_microbatches 3"),
    (dict(seq_len=64), "exceeds the model's position table"),
    (dict(train_steps=0), "train_steps must be positive"),
])
def test_validate_rejects_bad_training_settings(change, message, tiny_text_dir, tiny_data_dir, tmp_path):
  with pytest.raises(ValueError, match=message):
    validation.validate(tc.MODEL, tc.data(tiny_text_dir, tiny_data_dir), tc.MESH, tc.train(**change), str(tmp_path))


@pytest.mark.parametrize("change, message", [
    (dict(sample_top_p=0.0), r"TrainConfig.sample_top_p must be in \(0, 1\] \(1: off\), got 0.0; e.g. "),
    (dict(sample_top_k=-1), "TrainConfig.sample_top_k must be >= 0"),
])
def test_bad_sampling_settings_are_refused_when_configured(change, message):
  with pytest.raises(ValueError, match=message):
    tc.train(**change)


def test_the_summary_samples_with_the_configured_filters_and_names_them(monkeypatch):
  from gpt3_jax import run_summary
  from gpt3_jax.inference import sampling
  assert run_summary._sampling_settings(tc.train()) == "temperature 0.8"
  cfg = tc.train(sample_top_k=40, sample_top_p=0.9, sample_tokens=3, sample_prompt="ab")
  assert run_summary._sampling_settings(cfg) == "temperature 0.8, top_k 40, top_p 0.9"
  calls = []
  monkeypatch.setattr(sampling, "generate", lambda *a, **kw: calls.append(kw) or [[7, 8, 9]])

  class Tokenizer:
    eot_id = 0
    encode = staticmethod(lambda text: [1, 2])
    decode = staticmethod(lambda ids: ",".join(map(str, ids)))

  result = RunResult(step=1, eval_loss=1.0, eval_metrics={}, unigram_loss=2.0, compile_seconds=0.0,
                     model_config=tc.MODEL, state=SimpleNamespace(params={}), tokenizer=Tokenizer(), preempted=False,
                     initialized_from="scratch")
  assert run_summary._sample(result, cfg) == "7,8,9"
  assert (calls[0]["top_k"], calls[0]["top_p"], calls[0]["max_new_tokens"]) == (40, 0.9, 3)


def test_gin_errors_are_one_line():
  with pytest.raises(ValueError, match="bad gin configuration.*nonexistent"):
    configs.parse_and_build([], ["TrainConfig.nonexistent = 1"])
  with pytest.raises(ValueError, match="does not exist"):
    configs.parse_and_build(["gin_configs/models/nope.gin"], [])


def test_model_vocab_must_match_tokenizer_vocab():
  bundle = configs.parse_and_build(["gin_configs/models/small.gin"], ["DataConfig.vocab_size = 8192"])
  with pytest.raises(ValueError, match="ModelConfig.vocab_size=50257 differs from the tokenizer's "
                                       "DataConfig.vocab_size=8192"):
    bundle.check_vocab()
  configs.parse_and_build(["gin_configs/models/tiny.gin"], ["DataConfig.vocab_size = 8192"]).check_vocab()
  configs.parse_and_build(["gin_configs/models/small.gin"], ["DataConfig.vocab_size = 50257"]).check_vocab()


def _main(args, env_extra=None, timeout=240, cwd=REPO):
  env = dict(os.environ, **(env_extra or {}))
  return subprocess.run([sys.executable, "-m", "gpt3_jax.main", *args], capture_output=True, text=True,
                        timeout=timeout, cwd=cwd, env=env)


def _one_line_error(result, fragment):
  assert result.returncode != 0
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, result.stderr[-2000:]
  assert fragment in errors[0], errors[0]
  assert "Traceback" not in result.stderr


def _tiny_main_args(text_dir, data_dir):
  """`main` flags for a tiny model trained 3 steps of 4 sequences on the test corpus."""
  return ["--gin_file=gin_configs/models/tiny.gin",
          f"--gin.DataConfig.paths=('{text_dir}',)", f"--gin.DataConfig.data_dir='{data_dir}'",
          "--gin.DataConfig.vocab_size=512", "--gin.DataConfig.validation_fraction=0.1",
          "--gin.ModelConfig.n_ctx=32", "--gin.ModelConfig.d_model=32", "--gin.ModelConfig.n_layers=2",
          "--gin.ModelConfig.n_heads=2", "--gin.ModelConfig.d_head=16", "--gin.ModelConfig.local_window=8",
          "--gin.TrainConfig.global_batch_size=4", "--gin.TrainConfig.train_steps=3",
          "--gin.TrainConfig.checkpoint_every=2", "--gin.TrainConfig.eval_batches=1",
          "--gin.TrainConfig.sample_tokens=8", "--gin.TrainConfig.peak_flops_per_device=1e11"]


@pytest.mark.slow
def test_cpu_devices_trains_data_parallel_over_the_cores_to_the_same_losses(tiny_text_dir, tiny_data_dir, tmp_path):
  """--cpu_devices=2 splits XLA:CPU into 2 devices and trains on a 2-way data mesh: the same losses as one device,
  at a learning rate where the updates move the loss; bad values fail in one line, with nothing written."""
  base = _tiny_main_args(tiny_text_dir, tiny_data_dir) + [
      "--gin.OptimizerConfig.peak_learning_rate=0.03", "--gin.OptimizerConfig.warmup_tokens=128",
      "--gin.TrainConfig.log_every=1"]
  runs = {}
  for devices in ("1", "2"):
    result = _main(base + [f"--cpu_devices={devices}", f"--workdir={tmp_path / devices}"])
    assert result.returncode == 0, result.stderr[-3000:]
    rows = map(json.loads, open(tmp_path / devices / "metrics.jsonl"))
    runs[devices] = (result.stderr, [row["loss"] for row in rows if row["split"] == "train"])
  assert "mesh {'data': 2, 'fsdp': 1, 'tensor': 1} over 2 cpu devices" in runs["2"][0]
  assert "mesh {'data': 1, 'fsdp': 1, 'tensor': 1} over 1 cpu devices" in runs["1"][0]
  assert len(runs["2"][1]) == 3
  np.testing.assert_allclose(runs["2"][1], runs["1"][1], rtol=1e-5)
  assert abs(runs["1"][1][2] - runs["1"][1][0]) > 0.05  # the updates move the loss: a lost one would show

  _one_line_error(_main(base + ["--cpu_devices=0", f"--workdir={tmp_path / 'zero'}"]), "--cpu_devices='0' must be")
  _one_line_error(_main(base + ["--cpu_devices=2", "--mode=sample", "--prompt=x", f"--workdir={tmp_path / '2'}"]),
                  "--cpu_devices applies to --mode=train")
  forced_4 = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  _one_line_error(_main(base + ["--cpu_devices=2", f"--workdir={tmp_path / 'both'}"], env_extra=forced_4),
                  "conflicts with XLA_FLAGS")
  assert not (tmp_path / "zero").exists() and not (tmp_path / "both").exists()


@pytest.mark.slow
def test_main_end_to_end_and_bad_input(tiny_text_dir, tiny_data_dir, tmp_path):
  """A tiny `main` run writes checkpoints, events and the operative config; bad input fails in one line."""
  base = _tiny_main_args(tiny_text_dir, tiny_data_dir)
  workdir = tmp_path / "run"
  # The persistent compilation cache (every program cached, however fast it compiled).
  cache = {"GPT3_JAX_COMPILATION_CACHE_DIR": str(tmp_path / "compile_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  result = _main(base + ["--workdir=run"], cwd=tmp_path, env_extra=cache)  # a relative workdir, gin files found
  assert result.returncode == 0, result.stderr[-3000:]
  assert "validation loss" in result.stdout and "unigram baseline" in result.stdout
  cached = sorted(os.listdir(tmp_path / "compile_cache"))
  assert cached, "the first run wrote nothing into the compilation cache"
  # The same experiment again: everything it compiles is found in the cache (nothing new is written), and the
  # cached programs compute what the compiled ones did.
  again = _main(base + ["--workdir=again"], cwd=tmp_path, env_extra=cache)
  assert again.returncode == 0, again.stderr[-3000:]
  assert sorted(os.listdir(tmp_path / "compile_cache")) == cached
  loss = re.compile(r"validation loss[^\n]*")
  assert loss.search(again.stdout).group(0) == loss.search(result.stdout).group(0), (again.stdout, result.stdout)
  assert {"2", "3"} <= set(os.listdir(workdir / "checkpoints"))
  assert glob.glob(str(workdir / "tensorboard" / "events.out.tfevents.*"))
  operative = (workdir / "operative_config.gin").read_text()
  assert "TrainConfig.train_steps = 3" in operative and "ModelConfig.d_model = 32" in operative

  # The trained workdir samples and scores through main (same gin flags, as a user would repeat them).
  sampled = _main(base + ["--mode=sample", "--prompt=import json", "--max_new_tokens=5", f"--workdir={workdir}"])
  assert sampled.returncode == 0, sampled.stderr[-3000:]
  assert sampled.stdout.startswith("=== prompt: 'import json'\nimport json")
  scored = _main(base + ["--mode=score", "--prompt=import json", f"--workdir={workdir}"])
  assert scored.returncode == 0, scored.stderr[-3000:]
  row = json.loads(scored.stdout.strip().splitlines()[-1])
  assert row["text"] == "import json" and len(row["tokens"]) == len(row["logprobs"]) > 0
  assert row["total"] == pytest.approx(sum(row["logprobs"])) and all(lp <= 0 for lp in row["logprobs"])

  # Bad input: each is one 'error:' line, non-zero exit, before any compilation; nothing written is harmed.
  before = sorted(os.listdir(workdir / "checkpoints"))
  _one_line_error(_main(base + ["--gin.TrainConfig.nonexistent=1", f"--workdir={workdir}"]), "nonexistent")
  _one_line_error(_main(["--gin_file=gin_configs/models/nope.gin", f"--workdir={workdir}"]), "nope.gin")
  _one_line_error(_main(base + ["--gin.MeshConfig.shape=(2, 1, 1)", f"--workdir={workdir}"]),
                  "needs 2 devices but 1 are available")
  _one_line_error(_main(base + ["--gin.TrainConfig.global_batch_size=3", "--gin.MeshConfig.shape=(2, 1, 1)",
                                f"--workdir={tmp_path / 'dp'}"],
                        env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}),
                  "not divisible by the data-parallel size 2")
  _one_line_error(_main(base + ["--gin.DataConfig.paths=('/no/such/dir',)", f"--workdir={tmp_path / 'x'}"]),
                  "/no/such/dir")
  readonly = tmp_path / "readonly"
  readonly.mkdir()
  readonly.chmod(0o500)
  if os.geteuid() != 0:  # root can write anywhere: use a path under a regular file instead
    _one_line_error(_main(base + [f"--workdir={readonly / 'w'}"]), "cannot be written")
  blocker = tmp_path / "file"
  blocker.write_text("x")
  _one_line_error(_main(base + [f"--workdir={blocker / 'w'}"]), "cannot be written")
  assert sorted(os.listdir(workdir / "checkpoints")) == before


def test_resume_inside_a_ramp_stage_with_microbatches_and_spike_detection(tiny_text_dir, tiny_data_dir, tmp_path):
  """Stop in the middle of a batch-ramp stage with 2 accumulated microbatches and spike detection on; the
  restart reproduces the uninterrupted losses exactly and carries the spike history over."""
  data = tc.data(tiny_text_dir, tiny_data_dir)
  extra = dict(num_microbatches=2, batch_ramp_tokens=512, batch_ramp_start_tokens=128, spike_factor=3.0,
               spike_window=2, eval_every=100)  # stages 4 -> 8 sequences; step 3 is inside the first stage
  full, split = str(tmp_path / "full"), str(tmp_path / "split")
  trainer.train(tc.MODEL, data, tc.OPTIMIZER, tc.MESH, tc.train(train_steps=6, **extra), full)
  trainer.train(tc.MODEL, data, tc.OPTIMIZER, tc.MESH, tc.train(train_steps=3, checkpoint_every=3, **extra), split)
  summary = trainer.train(tc.MODEL, data, tc.OPTIMIZER, tc.MESH, tc.train(train_steps=6, checkpoint_every=3, **extra),
                          split)
  assert _losses(split) == _losses(full)
  rows = [json.loads(line) for line in open(os.path.join(split, "metrics.jsonl"))]
  assert [r["batch_size"] for r in rows if r["split"] == "train"] == [4, 4, 4, 4, 8, 8]
  assert summary.spike_recoveries == 0
