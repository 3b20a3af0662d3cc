"""Sweeps: an Optuna study in SQLite over gin bindings, run by `--mode=sweep` workers as real processes: its trials,
results table, plots and HParams summaries; two workers sharing one study; the median pruner stopping a trial that
falls behind; a rerun that continues the study; one-line errors with the storage password redacted."""

import csv
import os
import subprocess
import sys

import pytest

optuna = pytest.importorskip("optuna")

from gpt3_jax.sweep import study as study_lib  # noqa: E402
from gpt3_jax.sweep.config import SweepConfig  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gin(tmp_path, tiny_text_dir, tiny_data_dir, space, **sweep):
  """A gin file: the tests' tiny model and corpus, 6 steps per trial, and the sweep's settings."""
  lines = [
      "ModelConfig.n_ctx = 32", "ModelConfig.d_model = 32", "ModelConfig.n_layers = 2", "ModelConfig.n_heads = 2",
      "ModelConfig.d_head = 16", "ModelConfig.attention_pattern = 'alternating'", "ModelConfig.local_window = 8",
      f"DataConfig.paths = ('{tiny_text_dir}',)", f"DataConfig.data_dir = '{tiny_data_dir}'",
      "DataConfig.vocab_size = 512", "OptimizerConfig.warmup_tokens = 256", "OptimizerConfig.decay_tokens = 4096",
      "TrainConfig.global_batch_size = 8", "TrainConfig.train_steps = 6", "TrainConfig.log_every = 1",
      "TrainConfig.eval_every = 2", "TrainConfig.eval_batches = 2", "TrainConfig.checkpoint_every = 2",
      "TrainConfig.sample_tokens = 0", "TrainConfig.peak_flops_per_device = 1e11", f"SweepConfig.space = {space!r}",
  ] + [f"SweepConfig.{k} = {v!r}" for k, v in sweep.items()]
  path = tmp_path / "sweep.gin"
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def _worker(gin_file, sweep_dir, *bindings):
  return subprocess.Popen([sys.executable, "-m", "gpt3_jax.main", "--mode=sweep", f"--gin_file={gin_file}",
                           f"--workdir={sweep_dir}", *[f"--gin.{b}" for b in bindings]], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=600):
  out, err = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, err[-3000:]
  return out


def _study(sweep_dir):
  return optuna.load_study(study_name="sweep", storage=f"sqlite:///{sweep_dir}/study.db")


@pytest.mark.slow
def test_two_workers_share_a_study_and_write_its_results(tiny_text_dir, tiny_data_dir, tmp_path):
  gin = _gin(tmp_path, tiny_text_dir, tiny_data_dir, {"OptimizerConfig.peak_learning_rate": ("log", 1e-3, 1e-2)},
             n_trials=2, sampler="random", pruner="none")
  sweep_dir = str(tmp_path / "sweep")
  workers = [_worker(gin, sweep_dir), _worker(gin, sweep_dir)]
  outs = [_finish(w) for w in workers]
  study = _study(sweep_dir)
  done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
  assert len(done) == 4 and sorted(t.number for t in done) == [0, 1, 2, 3]
  assert len({t.params["OptimizerConfig.peak_learning_rate"] for t in done}) == 4
  assert "4 trials (4 complete); best" in outs[0] + outs[1]
  with open(os.path.join(sweep_dir, "results.csv")) as f:
    table = list(csv.DictReader(f))
  assert len(table) == 4 and all(r["state"] == "complete" and float(r["loss"]) > 0 for r in table)
  assert all(float(r["tokens"]) == 6 * 8 * 32 and float(r["params"]) > 0 and float(r["flops"]) > 0 for r in table)
  for t in done:  # each trial trained with its own learning rate, in its own directory
    config = open(os.path.join(t.user_attrs["workdir"], "operative_config.gin")).read()
    assert f"peak_learning_rate = {t.params['OptimizerConfig.peak_learning_rate']!r}" in config
  # The last worker to finish wrote the plots and every finished trial's HParams summary.
  for name in ("objective_vs_OptimizerConfig_peak_learning_rate.png", "learning_curves.png", "loss_vs_lr.png"):
    assert os.path.getsize(os.path.join(sweep_dir, name)) > 5_000
  assert all(os.listdir(os.path.join(t.user_attrs["workdir"], "hparams")) for t in done)
  # A rerun continues the study: one more trial, the earlier ones kept.
  _finish(_worker(gin, sweep_dir, "SweepConfig.n_trials=1"))
  assert len(_study(sweep_dir).trials) == 5


@pytest.mark.slow
def test_the_median_pruner_stops_a_trial_that_falls_behind(tiny_text_dir, tiny_data_dir, tmp_path):
  """Two trials at a good learning rate, then one at 1e-7 whose loss stays at its start: pruned at its first
  evaluation against the median of the others."""
  gin = _gin(tmp_path, tiny_text_dir, tiny_data_dir,
             {"OptimizerConfig.peak_learning_rate": ("choice", (1e-2, 1e-7))}, n_trials=3, sampler="grid",
             pruner="median")
  sweep_dir = str(tmp_path / "sweep")
  study = study_lib.open_study(SweepConfig(space={"OptimizerConfig.peak_learning_rate": ("choice", (1e-2, 1e-7))},
                                           sampler="random"), sweep_dir)
  for lr in (1e-2, 1e-2, 1e-7):
    study.enqueue_trial({"OptimizerConfig.peak_learning_rate": lr}, skip_if_exists=False)
  _finish(_worker(gin, sweep_dir))
  states = [(t.params["OptimizerConfig.peak_learning_rate"], t.state.name) for t in _study(sweep_dir).trials]
  assert states == [(1e-2, "COMPLETE"), (1e-2, "COMPLETE"), (1e-7, "PRUNED")], states


@pytest.mark.slow
def test_a_failing_trial_is_recorded_with_its_error_and_the_sweep_goes_on(tiny_text_dir, tiny_data_dir, tmp_path):
  """A trial that fails at run time (here: it starts from a run that does not exist) is FAIL with its one-line
  error in the study and the results table; the next trial still runs and the worker exits 0."""
  space = {"TrainConfig.init_from": ("choice", (str(tmp_path / "no_such_run"), ""))}
  gin = _gin(tmp_path, tiny_text_dir, tiny_data_dir, space, n_trials=2, sampler="grid", pruner="none")
  sweep_dir = str(tmp_path / "sweep")
  study = study_lib.open_study(SweepConfig(space=space, sampler="random"), sweep_dir)
  for value in (str(tmp_path / "no_such_run"), ""):
    study.enqueue_trial({"TrainConfig.init_from": value})
  out = _finish(_worker(gin, sweep_dir))
  trials = _study(sweep_dir).trials
  assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"], [t.state.name for t in trials]
  assert "no_such_run" in trials[0].user_attrs["error"] and "\n" not in trials[0].user_attrs["error"]
  assert "2 trials (1 complete, 1 fail)" in out, out
  with open(os.path.join(sweep_dir, "results.csv")) as f:
    table = list(csv.DictReader(f))
  assert [r["state"] for r in table] == ["fail", "complete"]
  assert table[0]["error"] == trials[0].user_attrs["error"] and table[1]["error"] == ""


@pytest.mark.slow
def test_workers_on_one_machine_split_its_cores(tiny_text_dir, tiny_data_dir, tmp_path):
  """SweepConfig.workers = 2: one command starts two workers on one study, each pinned to its own cores; each
  runs its n_trials."""
  cores = sorted(os.sched_getaffinity(0))
  if len(cores) < 2:
    pytest.skip("needs 2 CPU cores")
  gin = _gin(tmp_path, tiny_text_dir, tiny_data_dir, {"OptimizerConfig.peak_learning_rate": ("log", 1e-3, 1e-2)},
             n_trials=1, sampler="random", pruner="none", workers=2)
  sweep_dir = str(tmp_path / "sweep")
  out = _finish(_worker(gin, sweep_dir))
  assert out.count("sweep worker ") == 2, out
  trials = _study(sweep_dir).trials
  assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
  shares = [set(t.user_attrs["cpus"]) for t in trials]
  assert not shares[0] & shares[1] and shares[0] | shares[1] == set(cores), shares
  assert "2 trials (2 complete)" in out.splitlines()[-3], out


def test_bad_sweeps_are_one_line_errors_with_the_password_redacted(tiny_text_dir, tiny_data_dir, tmp_path):
  url = "postgresql://sweeper:s3cret@127.0.0.1:1/studies"
  assert study_lib.redact(url) == "postgresql://sweeper:***@127.0.0.1:1/studies"
  with pytest.raises(ValueError, match=r"'int', low, high\) with low < high"):
    SweepConfig(space={"ModelConfig.n_layers": ("int", 4, 2)})
  with pytest.raises(ValueError, match="sampler='grid' needs every parameter as"):
    SweepConfig(space={"OptimizerConfig.peak_learning_rate": ("log", 1e-4, 1e-2)}, sampler="grid")
  gin = _gin(tmp_path, tiny_text_dir, tiny_data_dir, {"ModelConfig.d_model": ("choice", (32, 33))})
  with pytest.raises(ValueError, match="n_heads"):  # a value the model refuses, before any trial runs
    study_lib.check(SweepConfig(space={"ModelConfig.d_model": ("choice", (32, -1))}), [gin], [])
  proc = _worker(gin, str(tmp_path / "pg"), f"SweepConfig.storage='{url}'")
  out, err = proc.communicate(timeout=300)
  assert proc.returncode != 0 and "cannot open the sweep storage postgresql://sweeper:***@127.0.0.1:1" in err
  assert "s3cret" not in out + err


def test_a_storage_password_from_the_environment_or_a_file_stays_out_of_configs_and_errors(monkeypatch,
                                                                                          tmp_path):
  """${NAME} and ?password_file=PATH put the password into the connection only: the URL as written (in gin, the
  operative config, logs) holds none, and a failed connection's error shows neither the password nor the URL
  with it."""
  monkeypatch.setenv("SWEEP_TEST_PW", "env-s3cret/+")
  (tmp_path / "pw").write_text("file-s3cret\n")
  url, secrets = study_lib.resolve_storage("postgresql://sweeper:${SWEEP_TEST_PW}@127.0.0.1:1/studies")
  assert url == "postgresql://sweeper:env-s3cret%2F%2B@127.0.0.1:1/studies" and secrets == ["env-s3cret/+"]
  url, secrets = study_lib.resolve_storage(f"postgresql://sweeper@127.0.0.1:1/studies?password_file={tmp_path}/pw")
  assert url == "postgresql://sweeper:file-s3cret@127.0.0.1:1/studies" and secrets == ["file-s3cret"]
  assert study_lib.resolve_storage("sqlite:///x.db") == ("sqlite:///x.db", [])
  for written in ("postgresql://sweeper:${SWEEP_TEST_PW}@127.0.0.1:1/studies",
                  f"postgresql://sweeper@127.0.0.1:1/studies?password_file={tmp_path}/pw"):
    with pytest.raises(ValueError, match="cannot open the sweep storage") as e:
      study_lib.open_study(SweepConfig(storage=written, space={"ModelConfig.d_model": ("choice", (32,))}),
                           str(tmp_path))
    assert "s3cret" not in str(e.value) and "\n" not in str(e.value), str(e.value)
  with pytest.raises(ValueError, match=r"names \$\{SWEEP_NO_SUCH_VAR\} but the environment does not set"):
    study_lib.resolve_storage("postgresql://u:${SWEEP_NO_SUCH_VAR}@127.0.0.1:1/db")
  with pytest.raises(ValueError, match="cannot read password_file"):
    study_lib.resolve_storage(f"postgresql://u@127.0.0.1:1/db?password_file={tmp_path}/missing")


@pytest.mark.slow
def test_a_trial_whose_worker_was_killed_is_rerun_and_resumes_its_checkpoint(tiny_text_dir, tiny_data_dir,
                                                                              tmp_path):
  import signal
  import time
  gin = _gin(tmp_path, tiny_text_dir, tiny_data_dir, {"OptimizerConfig.peak_learning_rate": ("log", 1e-3, 1e-2)},
             n_trials=1, sampler="random", pruner="none", heartbeat_s=1)
  sweep_dir = str(tmp_path / "sweep")
  first = _worker(gin, sweep_dir, "TrainConfig.train_steps=40", "TrainConfig.eval_every=40")
  checkpoint = os.path.join(sweep_dir, "trial_0", "checkpoints", "4")
  deadline = time.time() + 300
  while not os.path.isdir(checkpoint) and time.time() < deadline and first.poll() is None:
    time.sleep(0.2)
  first.send_signal(signal.SIGKILL)
  first.communicate()
  assert os.path.isdir(checkpoint)
  time.sleep(4)  # past the grace period of 3 heartbeats
  second = _worker(gin, sweep_dir, "TrainConfig.train_steps=40", "TrainConfig.eval_every=40")
  out, err = second.communicate(timeout=600)
  assert second.returncode == 0, err[-3000:]
  trials = _study(sweep_dir).trials
  assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
  assert trials[1].params == trials[0].params and trials[1].user_attrs["workdir"].endswith("trial_0")
  assert "resumed from step" in err


@pytest.mark.slow
def test_two_workers_share_a_study_in_postgresql(tiny_text_dir, tiny_data_dir, tmp_path):
  """The same sweep with its study in a real PostgreSQL server (pgserver: started for the test on a local socket,
  stopped after)."""
  pgserver = pytest.importorskip("pgserver")
  server = pgserver.get_server(str(tmp_path / "pg"), cleanup_mode="stop")
  try:
    url = server.get_uri()
    gin = _gin(tmp_path, tiny_text_dir, tiny_data_dir, {"OptimizerConfig.peak_learning_rate": ("log", 1e-3, 1e-2)},
               n_trials=1, sampler="random", pruner="none", storage=url)
    workers = [_worker(gin, str(tmp_path / "sweep")) for _ in range(2)]
    for w in workers:
      _finish(w)
    study = optuna.load_study(study_name="sweep", storage=url)
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "COMPLETE"]
    assert len({t.params["OptimizerConfig.peak_learning_rate"] for t in study.trials}) == 2
    assert not os.path.exists(tmp_path / "sweep" / "study.db")
  finally:
    server.cleanup()


def test_a_grid_of_linked_bindings_visits_every_point_once():
  """Linked bindings (one choice of tuples) on a grid: every combination once, as gin bindings."""
  cfg = SweepConfig(space={"ModelConfig.d_model,ModelConfig.n_heads": ("choice", ((64, 2), (128, 4))),
                           "TrainConfig.train_steps": ("choice", (10, 20, 30))}, sampler="grid")
  study = optuna.create_study(sampler=study_lib.make_sampler(cfg, 0))
  seen = []

  def objective(trial):
    seen.append(tuple(study_lib.trial_bindings_of(trial, cfg)))
    return 0.0

  study.optimize(objective, n_trials=6)
  assert len(set(seen)) == 6
  assert ("ModelConfig.d_model = 128", "ModelConfig.n_heads = 4", "TrainConfig.train_steps = 20") in seen


def test_workers_started_together_open_a_new_database(tmp_path):
  """Four processes opening the same new SQLite study at once: they race to create its tables, and every one
  opens the study (the loser retries once the winner is done)."""
  code = ("import sys; from gpt3_jax.sweep import study; from gpt3_jax.sweep.config import SweepConfig; "
          "study.open_study(SweepConfig(space={'OptimizerConfig.peak_learning_rate': ('log', 1e-4, 1e-2)}), "
          "sys.argv[1])")
  for round_ in range(3):
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"s{round_}")], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-500:] for e in errors]
