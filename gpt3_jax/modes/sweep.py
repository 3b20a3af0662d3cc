"""--mode=sweep: run SweepConfig.n_trials trials of an Optuna study in --workdir (the sweep directory), each a
training run of the gin files plus the trial's bindings in <workdir>/trial_<n>; then print the study's summary and
where its results are (gpt3_jax/sweep/, docs/sweeps.md)."""

from __future__ import annotations

from typing import Sequence


def run(bundle, workdir: str, gin_files: Sequence[str], bindings: Sequence[str]) -> None:
  import os
  from gpt3_jax.sweep import study as study_lib
  if bundle.sweep.workers > 1:  # this command N times, each with its share of the devices, on one study
    from gpt3_jax.sweep import launch
    study_lib.check(bundle.sweep, gin_files, bindings)  # a bad space fails once, here, not in every worker
    study_lib.open_study(bundle.sweep, workdir)  # created before the workers race to create it
    code = launch.run_workers(bundle.sweep.workers)
    if code:
      raise SystemExit(code)
    study = study_lib.open_study(bundle.sweep, workdir)
  else:
    study = study_lib.run(bundle.sweep, gin_files, bindings, workdir)
  print("=" * 72)
  print(f"sweep {bundle.sweep.study_name!r} ({study_lib.redact(study_lib.storage_url(bundle.sweep, workdir))}): "
        f"{study_lib.summary_line(study)}")
  print(f"results: {os.path.join(workdir, 'results.md')}, results.csv and plots; tensorboard --logdir {workdir}")
  print("=" * 72)
