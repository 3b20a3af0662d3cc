r"""Start-up with and without the persistent compilation cache: the same small experiment run as a user would
(`python -m gpt3_jax.main`, a fresh process and workdir each time), with the data cache already prepared.

  python experiments/startup_benchmark.py [--steps=40] [--repeats=2]

Each repeat runs: without the cache (--nocompilation_cache), with an empty cache (it is written), and with the
filled cache; it reports each run's wall time and the train step's logged compile time. The model is the 2-layer,
64-wide one of the notebook's sweep on three stdlib packages (vocab 512, 16 x 64 tokens a step).
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

from absl import app, flags

flags.DEFINE_integer("steps", 40, "Training steps of each run.")
flags.DEFINE_integer("repeats", 2, "Rounds of (no cache, empty cache, filled cache).")
FLAGS = flags.FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bindings(text_dir: str, data_dir: str, steps: int):
  return [f"--gin.DataConfig.paths=('{text_dir}',)", f"--gin.DataConfig.data_dir='{data_dir}'",
          "--gin.DataConfig.vocab_size=512", "--gin.DataConfig.validation_fraction=0.25",
          "--gin.ModelConfig.n_ctx=64", "--gin.ModelConfig.n_layers=2", "--gin.ModelConfig.d_model=64",
          "--gin.ModelConfig.n_heads=4", "--gin.ModelConfig.d_head=16", "--gin.ModelConfig.local_window=16",
          "--gin.TrainConfig.seq_len=64", "--gin.TrainConfig.global_batch_size=16",
          f"--gin.TrainConfig.train_steps={steps}", f"--gin.OptimizerConfig.decay_tokens={steps * 1024}",
          "--gin.TrainConfig.eval_every=20", "--gin.TrainConfig.eval_batches=4",
          "--gin.TrainConfig.checkpoint_every=1000"]


def _run(args, env) -> tuple:
  start = time.perf_counter()
  result = subprocess.run([sys.executable, "-m", "gpt3_jax.main", "--gin_file=gin_configs/experiments/mini_study.gin",
                           *args], cwd=REPO, env=env, capture_output=True, text=True, check=False)
  wall = time.perf_counter() - start
  if result.returncode:
    raise RuntimeError(result.stderr[-2000:])
  compiled = re.search(r"compiled in ([0-9.]+)s", result.stderr)
  return wall, float(compiled.group(1)) if compiled else float("nan")


def main(argv):
  del argv
  scratch = tempfile.mkdtemp(prefix="startup_benchmark_")
  try:
    text_dir = os.path.join(scratch, "texts")
    for package in ("json", "email", "logging"):
      shutil.copytree(os.path.join(sysconfig.get_paths()["stdlib"], package), os.path.join(text_dir, package),
                      ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    base = _bindings(text_dir, os.path.join(scratch, "data"), FLAGS.steps)
    env = {k: v for k, v in os.environ.items() if k != "JAX_DISABLE_MOST_OPTIMIZATIONS"}
    _run(base + [f"--workdir={scratch}/prepare", "--nocompilation_cache"], env)  # data cache, not timed
    results = {"no cache": [], "empty cache": [], "filled cache": []}
    for r in range(FLAGS.repeats):
      cache = os.path.join(scratch, f"cache{r}")
      cached = dict(env, GPT3_JAX_COMPILATION_CACHE_DIR=cache)
      results["no cache"].append(_run(base + [f"--workdir={scratch}/none{r}", "--nocompilation_cache"], env))
      results["empty cache"].append(_run(base + [f"--workdir={scratch}/empty{r}"], cached))
      results["filled cache"].append(_run(base + [f"--workdir={scratch}/filled{r}"], cached))
    from gpt3_jax.parallel.hardware import host_line
    print(f"{host_line()}, {FLAGS.steps} steps, {FLAGS.repeats} repeats (median)")
    print(f"{'run':>13} {'wall s':>8} {'train step compile s':>21}")
    for name, runs in results.items():
      print(f"{name:>13} {statistics.median(w for w, _ in runs):8.1f} {statistics.median(c for _, c in runs):21.1f}")
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
