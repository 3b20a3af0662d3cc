"""A sweep worker: an Optuna study in a real database, each trial a training run with the trial's gin bindings.

Several workers (processes, machines) given the same storage share one study. Trials have a heartbeat: a trial
whose worker died (SIGKILL, a lost machine) is failed by the next worker that starts a trial and re-run with the
same parameters in the same trial directory, so it resumes from its checkpoints (bit-exact, like any resumed
run). A SIGTERMed trial saves its checkpoint and stops the worker, leaving the trial to be resumed the same way.
"""

from __future__ import annotations

import os
import sys
import time
from typing import List, Sequence, Tuple

from absl import logging

from gpt3_jax.errors import one_line
from gpt3_jax.sweep.config import SweepConfig

MAX_RETRY = 3  # a trial whose worker died is re-run at most this often
OPEN_ATTEMPTS = 5
SQLITE_TIMEOUT_S = 60
SCHEMA_RACES = ("already exists", "UNIQUE constraint failed", "duplicate key", "database is locked")


def storage_url(cfg: SweepConfig, sweep_dir: str) -> str:
  return cfg.storage or f"sqlite:///{os.path.join(os.path.abspath(sweep_dir), 'study.db')}"


def redact(url: str) -> str:
  """The storage URL with its password replaced by ***, for logs and errors."""
  try:
    from sqlalchemy.engine import make_url
    return make_url(url).render_as_string(hide_password=True)
  except Exception:  # not a URL SQLAlchemy parses: show only its scheme
    return url.split("://", 1)[0] + "://***"


def resolve_storage(url: str) -> Tuple[str, List[str]]:
  """(the URL to connect with, its secrets): `${NAME}` replaced by the environment variable NAME, and a
  `password_file=PATH` query parameter read into the password. Configs, logs and result tables keep the URL as
  written, so a password given this way is never in them; the secrets are scrubbed from driver errors."""
  import re
  import urllib.parse
  secrets: List[str] = []

  def from_env(match) -> str:
    name = match.group(1)
    if name not in os.environ:
      raise ValueError(f"SweepConfig.storage names ${{{name}}} but the environment does not set {name}; export "
                       f"it, or put the password in a file and add ?password_file=PATH to the URL")
    secrets.append(os.environ[name])
    return urllib.parse.quote(os.environ[name], safe="")

  url = re.sub(r"\$\{(\w+)\}", from_env, url)
  if "password_file=" in url:
    from sqlalchemy.engine import make_url
    parsed = make_url(url)
    path = parsed.query["password_file"]
    try:
      with open(path, encoding="utf-8") as f:
        password = f.read().strip()
    except OSError as e:
      raise ValueError(f"SweepConfig.storage: cannot read password_file {path!r} ({e.strerror})") from None
    secrets.append(password)
    url = parsed.difference_update_query(["password_file"]).set(password=password).render_as_string(
        hide_password=False)
  return url, [s for s in secrets if s]


def _engine_kwargs(url: str) -> dict:
  """SQLite lets one writer in at a time and makes the others wait 5 s by default before 'database is locked';
  workers on a busy machine (heartbeats, trial updates, result tables) wait longer."""
  return {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {}


def open_study(cfg: SweepConfig, sweep_dir: str):
  """The study (created, or loaded when it exists) in its storage; a storage that cannot be opened is a one-line
  error with the password redacted."""
  import warnings
  import optuna
  # Heartbeats and their retry callback are marked experimental (stable since Optuna 2.8); say it once, in the docs.
  warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
  written = storage_url(cfg, sweep_dir)
  url, secrets = resolve_storage(written)
  if url.startswith("sqlite:///"):
    os.makedirs(os.path.dirname(url[len("sqlite:///"):]), exist_ok=True)
  for attempt in range(OPEN_ATTEMPTS):
    try:
      storage = optuna.storages.RDBStorage(
          url, engine_kwargs=_engine_kwargs(url), heartbeat_interval=cfg.heartbeat_s, grace_period=3 * cfg.heartbeat_s,
          heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))
      break
    except Exception as e:  # driver errors carry the URL, password included: never show them as they are
      # Workers started together race to create the schema of a new database (a table or the schema version
      # written twice): the loser opens it again once the winner is done.
      if any(m in str(e) for m in SCHEMA_RACES) and attempt + 1 < OPEN_ATTEMPTS:
        time.sleep(0.5 * (attempt + 1))
        continue
      message = str(e).replace(url, redact(written))
      for secret in secrets:
        message = message.replace(secret, "***")
      raise ValueError(f"cannot open the sweep storage {redact(written)} ({type(e).__name__}: "
                       f"{message.splitlines()[0][:200]}); check SweepConfig.storage") from None
  pruner = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
            "hyperband": lambda: optuna.pruners.HyperbandPruner(),
            "none": lambda: optuna.pruners.NopPruner()}[cfg.pruner]()
  return optuna.create_study(study_name=cfg.study_name, storage=storage, sampler=make_sampler(cfg, cfg.seed),
                             pruner=pruner, direction=cfg.direction, load_if_exists=True)


def make_sampler(cfg: SweepConfig, seed: int):
  import optuna
  return {"tpe": lambda: optuna.samplers.TPESampler(seed=seed),
          "random": lambda: optuna.samplers.RandomSampler(seed=seed),
          "grid": lambda: optuna.samplers.GridSampler({k: _choices(k, v) for k, v in cfg.space.items()},
                                                      seed=seed)}[cfg.sampler]()


def _choices(name: str, spec) -> list:
  """A choice's values as the study stores them: linked bindings ('A,B') as the repr of each tuple (Optuna's
  categorical values are scalars)."""
  return [repr(tuple(v)) for v in spec[1]] if "," in name else list(spec[1])


def _bindings(name: str, value) -> List[str]:
  """The gin bindings of one space entry's value (a linked entry's: a tuple, or its repr as stored)."""
  if "," not in name:
    return [f"{name} = {value!r}"]
  import ast
  values = ast.literal_eval(value) if isinstance(value, str) else value
  return [f"{n.strip()} = {v!r}" for n, v in zip(name.split(","), values)]


def suggest(trial, space) -> List[str]:
  """The trial's gin bindings, one per swept parameter (several per linked entry)."""
  bindings = []
  for name, spec in space.items():
    kind = spec[0]
    if kind == "choice":
      value = trial.suggest_categorical(name, _choices(name, spec))
    elif kind == "int":
      value = trial.suggest_int(name, int(spec[1]), int(spec[2]))
    else:
      value = trial.suggest_float(name, float(spec[1]), float(spec[2]), log=kind == "log")
    bindings += _bindings(name, value)
  return bindings


def trial_bindings_of(trial, cfg: SweepConfig) -> List[str]:
  """The trial's gin bindings, drawn by the configured sampler."""
  # Random and TPE trials draw from a sampler seeded by (seed, trial number): reproducible, and distinct across
  # workers (one seed per worker would make every worker draw the same values); both read the study's history from
  # the storage, so a fresh sampler loses nothing. The grid sampler keeps its instance: its grid order depends
  # on its seed, and it picks a point no trial has taken yet.
  if cfg.sampler != "grid":
    trial.study.sampler = make_sampler(cfg, cfg.seed + trial.number)
  return suggest(trial, cfg.space)


class ReportToTrial:
  """A training hook after each evaluation: reports the metric to the trial and stops a trial the pruner
  prunes."""

  def __init__(self, trial, metric: str):
    self.trial, self.metric = trial, metric

  def every(self, cfg) -> int:
    return cfg.eval_every

  def __call__(self, run, step: int) -> None:
    import optuna
    value = (run.eval_metrics or {}).get(self.metric)
    if value is None:
      return
    self.trial.report(float(value), step)
    if self.trial.should_prune():
      logging.info("trial %d pruned at step %d (%s %.4f)", self.trial.number, step, self.metric, value)
      raise optuna.TrialPruned(f"{self.metric} {value:.4f} at step {step}")


def trial_dir(sweep_dir: str, trial) -> str:
  """trial_<number>: a retried trial (its worker died) reuses the directory of the trial it repeats."""
  import optuna
  frozen = trial.study._storage.get_trial(trial._trial_id)  # pylint: disable=protected-access (its system attrs)
  number = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
  return os.path.join(os.path.abspath(sweep_dir), f"trial_{trial.number if number is None else number}")


def run_trial(trial, cfg: SweepConfig, gin_files: Sequence[str], bindings: Sequence[str], sweep_dir: str) -> float:
  from gpt3_jax import configs
  from gpt3_jax.model.config import param_counts
  from gpt3_jax.training import trainer
  trial_bindings = trial_bindings_of(trial, cfg)
  bundle = configs.parse_and_build(gin_files, list(bindings) + trial_bindings)
  bundle.check_vocab()
  workdir = trial_dir(sweep_dir, trial)
  trial.set_user_attr("workdir", workdir)
  trial.set_user_attr("cpus", sorted(os.sched_getaffinity(0)))  # this worker's share (sweep/launch.py)
  try:
    result = trainer.train(bundle.model, bundle.data, bundle.optimizer, bundle.mesh, bundle.train, workdir,
                           operative_config=bundle.operative_config, extra_hooks=[ReportToTrial(trial, cfg.metric)])
  except Exception as e:  # pylint: disable=broad-except  (recorded; the sweep goes on: see run())
    import optuna
    if not isinstance(e, optuna.TrialPruned):
      trial.set_user_attr("error", one_line(e))
      logging.warning("trial %d failed: %s", trial.number, one_line(e))
    raise
  if result.preempted:  # SIGTERM: checkpoint saved; leave the trial running so a worker resumes it
    logging.warning("worker preempted during trial %d; run the sweep again to resume it", trial.number)
    sys.exit(143)
  if cfg.metric not in result.eval_metrics:
    raise ValueError(f"SweepConfig.metric={cfg.metric!r} is not among the evaluation's metrics "
                     f"{sorted(result.eval_metrics)}")
  model = result.model_config
  trial.set_user_attr("params", float(param_counts(model)["non_embedding_params"]))
  trial.set_user_attr("tokens", float(result.tokens))
  trial.set_user_attr("flops", float(result.tokens * result.flops_per_token))
  trial.set_user_attr("eval_metrics", dict(result.eval_metrics))
  return float(result.eval_metrics[cfg.metric])


def check(cfg: SweepConfig, gin_files: Sequence[str], bindings: Sequence[str]) -> None:
  """Before the study is opened: a space is given, and a trial's configuration builds (every swept name is a real
  setting, every value of a choice is valid)."""
  from gpt3_jax import configs
  if not cfg.space:
    raise ValueError("SweepConfig.space is empty; e.g. SweepConfig.space = {'OptimizerConfig.peak_learning_rate': "
                     "('log', 1e-4, 1e-2)}")
  for name, spec in cfg.space.items():
    for value in spec[1] if spec[0] == "choice" else spec[1:]:
      configs.parse_and_build(gin_files, list(bindings) + _bindings(name, value))


def run(cfg: SweepConfig, gin_files: Sequence[str], bindings: Sequence[str], sweep_dir: str):
  """Runs `cfg.n_trials` trials of the study in `sweep_dir`, then writes its results; returns the study."""
  import optuna
  from gpt3_jax.sweep import results
  check(cfg, gin_files, bindings)
  study = open_study(cfg, sweep_dir)
  logging.info("sweep %r in %s: %d trials so far", cfg.study_name, redact(storage_url(cfg, sweep_dir)),
               len(study.trials))
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  # A trial that fails (diverges, runs out of memory, refuses its input) is recorded FAIL with its one-line error
  # and the sweep goes on; a preempted worker (SystemExit) stops.
  study.optimize(lambda trial: run_trial(trial, cfg, gin_files, bindings, sweep_dir), n_trials=cfg.n_trials,
                 callbacks=[lambda study, trial: results.write(study, cfg, sweep_dir)], catch=(Exception,))
  results.write(study, cfg, sweep_dir, plots=True)
  return study


def summary_line(study) -> str:
  import optuna
  done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
  states = {s.name.lower(): sum(t.state == s for t in study.trials) for s in optuna.trial.TrialState}
  best = f"; best {study.best_value:.4f} {study.best_trial.params}" if done else ""
  return f"{len(study.trials)} trials ({', '.join(f'{n} {k}' for k, n in states.items() if n)}){best}"


