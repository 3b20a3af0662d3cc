r"""Fault injection: train a small model in a subprocess, kill it (SIGKILL / SIGTERM) at random points several
times, damage the newest checkpoint once, let it finish, and compare every logged loss with an uninterrupted run.

  python experiments/fault_injection.py --kills=4 --steps=24

Prints the faults survived and the maximum loss difference against the uninterrupted run (0 on CPU: resume is
bit-exact). The tests import `run_with_faults` with a smaller configuration.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_flags(text_dir: str, data_dir: str, steps: int) -> List[str]:
  """A tiny alternating-attention model on a small real corpus, checkpointing every step (asynchronously)."""
  return ["--gin_file=gin_configs/models/tiny.gin",
          f"--gin.DataConfig.paths=('{text_dir}',)", f"--gin.DataConfig.data_dir='{data_dir}'",
          "--gin.DataConfig.vocab_size=512", "--gin.DataConfig.validation_fraction=0.1",
          "--gin.ModelConfig.n_ctx=32", "--gin.ModelConfig.d_model=32", "--gin.ModelConfig.n_layers=2",
          "--gin.ModelConfig.n_heads=2", "--gin.ModelConfig.d_head=16", "--gin.ModelConfig.local_window=8",
          "--gin.TrainConfig.global_batch_size=4", f"--gin.TrainConfig.train_steps={steps}",
          "--gin.TrainConfig.checkpoint_every=1", "--gin.TrainConfig.keep_checkpoints=3",
          "--gin.TrainConfig.log_every=1", f"--gin.TrainConfig.eval_every={steps}",
          "--gin.TrainConfig.eval_batches=1", "--gin.TrainConfig.sample_tokens=0",
          "--gin.TrainConfig.peak_flops_per_device=1e11",
          # A learning rate that trains (tiny.gin keeps the paper's 375M-token warmup): a lost or repeated update
          # then changes the losses that compare() checks.
          "--gin.OptimizerConfig.peak_learning_rate=3e-3", "--gin.OptimizerConfig.warmup_tokens=256",
          "--gin.OptimizerConfig.decay_tokens=4096"]


def make_corpus(root: str) -> str:
  """A few packages of the running interpreter's standard library: real text, present on every machine."""
  stdlib = sysconfig.get_paths()["stdlib"]
  for package in ("json", "email", "logging", "http"):
    shutil.copytree(os.path.join(stdlib, package), os.path.join(root, package), dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  return root


def _start(flags: List[str], workdir: str, log) -> subprocess.Popen:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.Popen([sys.executable, "-m", "gpt3_jax.main", *flags, f"--workdir={workdir}"], cwd=REPO,
                          env=env, stdout=log, stderr=subprocess.STDOUT)


def logged_losses(workdir: str) -> List[tuple]:
  """(step, loss) of every logged training step, in order (steps re-run after a restart appear again)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:  # a line cut by a kill
        continue
      if row.get("split") == "train":
        rows.append((row["step"], row["loss"]))
  return rows


def _wait_for_step(proc: subprocess.Popen, workdir: str, step: int, timeout: float) -> bool:
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      return False
    done = [s for s, _ in logged_losses(workdir)]
    if done and done[-1] >= step:
      return True
    time.sleep(0.05)
  raise TimeoutError(f"training did not reach step {step} in {timeout}s")


def damage_newest_checkpoint(workdir: str) -> Optional[str]:
  """Truncates the largest array file of the newest complete checkpoint; returns the checkpoint's path."""
  ckpt_root = os.path.join(workdir, "checkpoints")
  steps = sorted(int(d) for d in os.listdir(ckpt_root) if d.isdigit())
  if not steps:
    return None
  newest = os.path.join(ckpt_root, str(steps[-1]))
  files = [f for f in glob.glob(os.path.join(newest, "state", "**", "*"), recursive=True) if os.path.isfile(f)]
  victim = max(files, key=os.path.getsize)
  with open(victim, "r+b") as f:
    f.truncate(os.path.getsize(victim) // 2)
  return newest


def run_uninterrupted(flags: List[str], workdir: str, log) -> Dict[int, float]:
  proc = _start(flags, workdir, log)
  if proc.wait(timeout=600) != 0:
    raise RuntimeError(f"uninterrupted run failed; see {log.name}")
  return dict(logged_losses(workdir))


def run_with_faults(flags: List[str], workdir: str, steps: int, kills: int, log, seed: int = 0,
                    damage: bool = True) -> Dict[str, float]:
  """Kills (mostly SIGKILL, one SIGTERM) at random steps, damages the newest checkpoint once, then finishes."""
  rng = random.Random(seed)
  faults = 0
  targets = sorted(rng.sample(range(2, steps - 1), kills))
  for i, target in enumerate(targets):
    proc = _start(flags, workdir, log)
    if not _wait_for_step(proc, workdir, target, timeout=300):
      raise RuntimeError(f"training exited before step {target}; see {log.name}")
    time.sleep(rng.uniform(0.0, 0.3))  # land anywhere in a step, often inside an async checkpoint write
    graceful = i == len(targets) // 2
    proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
    code = proc.wait(timeout=120)
    if graceful and code != 0:
      raise RuntimeError(f"SIGTERM should exit cleanly, got exit code {code}; see {log.name}")
    faults += 1
    if damage and i == len(targets) - 1 and damage_newest_checkpoint(workdir):
      faults += 1
  proc = _start(flags, workdir, log)
  if proc.wait(timeout=600) != 0:
    raise RuntimeError(f"final run failed; see {log.name}")
  return {"faults": faults}


def compare(reference: Dict[int, float], rows: List[tuple]) -> float:
  """Max |loss - reference loss| over every logged step (re-runs included); inf if a step is missing."""
  seen = {s for s, _ in rows}
  if seen != set(reference):
    return float("inf")
  return max(abs(loss - reference[s]) for s, loss in rows)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--kills", type=int, default=4)
  parser.add_argument("--steps", type=int, default=24)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  root = tempfile.mkdtemp(prefix="fault_injection_")
  text_dir = make_corpus(os.path.join(root, "corpus"))
  flags = tiny_flags(text_dir, os.path.join(root, "data"), args.steps)
  with open(os.path.join(root, "log.txt"), "w") as log:
    reference = run_uninterrupted(flags, os.path.join(root, "uninterrupted"), log)
    result = run_with_faults(flags, os.path.join(root, "faulty"), args.steps, args.kills, log, seed=args.seed)
  rows = logged_losses(os.path.join(root, "faulty"))
  damaged = glob.glob(os.path.join(root, "faulty", "checkpoints_damaged", "*"))
  print(f"faults survived: {result['faults']} ({args.kills} kills incl. 1 SIGTERM, "
        f"{len(damaged)} damaged checkpoint set aside)")
  print(f"steps logged: {len(rows)} (incl. re-runs after restarts) of {args.steps}")
  print(f"max |loss difference| vs uninterrupted: {compare(reference, rows)}")
  print(f"logs and workdirs: {root}")


if __name__ == "__main__":
  main()
