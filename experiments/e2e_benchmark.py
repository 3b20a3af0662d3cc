r"""Whole training runs, start to exit, ours against a nanoGPT-style PyTorch loop, interleaved.

  python experiments/e2e_benchmark.py [--steps=150 --eval_every=50 --eval_batches=4 --rounds=2]

Both train tiny.gin's shape (4 layers, d_model 256, vocab 4096; dense attention, float32; 8 x 256
tokens a step) on the same nanoGPT token files, exported once from the embedded stdlib corpus
(`python -m gpt3_jax.data.export_tokens`, not timed). Ours is `python -m gpt3_jax.main` as a user runs it (data
pipeline, compilation, evaluation at the cadence, an orbax checkpoint at the end, the closing summary), with a
fresh workdir and an empty compilation cache each round ("cold"); with --warm it also runs once more on the
filled cache. PyTorch's is experiments/torch_train_loop.py (Hugging Face GPT2LMHeadModel eager, same cadence,
torch.save at the end). Each round runs both, alternating who goes first.

Printed: each run's wall time (process start to exit) and its median step time (ours from the logged tokens/s,
PyTorch's timed around each step), then two speed-ups, PyTorch / ours: the end-to-end one and the step one. The
loop adds no per-step stall when the first approaches the second as the run grows (start-up is a fixed cost).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

flags.DEFINE_integer("steps", 150, "Training steps of each run.")
flags.DEFINE_integer("eval_every", 50, "Validation every this many steps (and at the end), both frameworks.")
flags.DEFINE_integer("eval_batches", 4, "Validation batches of 8 x 256 tokens.")
flags.DEFINE_integer("rounds", 2, "Rounds of (ours, PyTorch).")
flags.DEFINE_bool("warm", False, "Also run ours a second time on the filled compilation cache each round.")
FLAGS = flags.FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
BATCH, SEQ, LEARNING_RATE, WARMUP_STEPS = 8, 256, 2e-3, 10

OURS_GIN = """include 'gin_configs/models/tiny.gin'
include 'gin_configs/mesh/data_parallel.gin'
e2e/SourceConfig.name = 'text'
e2e/SourceConfig.kind = 'token_files'
e2e/SourceConfig.train_path = '{tokens}/train.bin'
e2e/SourceConfig.validation_path = '{tokens}/val.bin'
e2e/SourceConfig.token_format = 'nanogpt'
DataConfig.sources = (@e2e/SourceConfig(),)
DataConfig.vocab_size = 4096
ModelConfig.attention_pattern = 'dense'
ModelConfig.dtype = 'float32'
ModelConfig.scan_unroll = 4
TrainConfig.global_batch_size = {batch}
TrainConfig.train_steps = {steps}
TrainConfig.log_every = 10
TrainConfig.eval_every = {eval_every}
TrainConfig.eval_batches = {eval_batches}
TrainConfig.checkpoint_every = {steps}
TrainConfig.sample_tokens = 0
OptimizerConfig.peak_learning_rate = {lr}
OptimizerConfig.warmup_tokens = {warmup_tokens}
OptimizerConfig.decay_tokens = {decay_tokens}
"""


def _export_tokens(out_dir: str) -> str:
  subprocess.run([sys.executable, "-m", "gpt3_jax.data.export_tokens", "--gin=DataConfig.vocab_size=4096",
                  f"--out_dir={out_dir}", "--format=nanogpt"], cwd=REPO, check=True, capture_output=True)
  return os.path.join(out_dir, "text")


def _timed(command, env=None) -> tuple[float, str]:
  start = time.perf_counter()
  result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
  wall = time.perf_counter() - start
  if result.returncode:
    raise RuntimeError(f"{command[:3]} failed:\n{result.stderr[-3000:]}")
  return wall, result.stdout


def _ours(gin_file: str, workdir: str, cache: str) -> dict:
  env = {k: v for k, v in os.environ.items() if k != "JAX_DISABLE_MOST_OPTIMIZATIONS"}
  env["GPT3_JAX_COMPILATION_CACHE_DIR"] = cache
  wall, _ = _timed([sys.executable, "-m", "gpt3_jax.main", f"--gin_file={gin_file}", f"--workdir={workdir}"], env)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  rates = [r["tokens_per_s"] for r in records if r.get("split") == "train" and "tokens_per_s" in r]
  val = [r["loss"] for r in records if r.get("split") != "train" and "loss" in r]
  last_val = val[-1] if val else float("nan")
  return {"wall_s": wall, "step_s": BATCH * SEQ / statistics.median(rates), "val_loss": last_val}


def _pytorch(tokens: str, out_dir: str) -> dict:
  wall, stdout = _timed([sys.executable, os.path.join(HERE, "torch_train_loop.py"), f"--data_dir={tokens}",
                         f"--out_dir={out_dir}", "--shape=tiny", f"--steps={FLAGS.steps}",
                         f"--warmup_steps={WARMUP_STEPS}", f"--learning_rate={LEARNING_RATE}",
                         f"--eval_every={FLAGS.eval_every}", f"--eval_batches={FLAGS.eval_batches}"])
  result = json.loads(stdout.strip().splitlines()[-1])
  return {"wall_s": wall, "step_s": result["median_step_s"], "val_loss": result["val_loss"]}


def main(argv):
  del argv
  scratch = tempfile.mkdtemp(prefix="e2e_benchmark_")
  try:
    tokens = _export_tokens(os.path.join(scratch, "tokens"))
    gin_file = os.path.join(scratch, "ours.gin")
    with open(gin_file, "w") as f:
      f.write(OURS_GIN.format(tokens=tokens, batch=BATCH, steps=FLAGS.steps, eval_every=FLAGS.eval_every,
                              eval_batches=FLAGS.eval_batches, lr=LEARNING_RATE,
                              warmup_tokens=WARMUP_STEPS * BATCH * SEQ, decay_tokens=FLAGS.steps * BATCH * SEQ))
    runs = {"ours (cold)": [], "ours (warm cache)": [], "PyTorch": []}
    for r in range(FLAGS.rounds):
      cache = os.path.join(scratch, f"cache{r}")
      order = ("ours", "pytorch") if r % 2 == 0 else ("pytorch", "ours")
      for kind in order:
        if kind == "pytorch":
          runs["PyTorch"].append(_pytorch(tokens, os.path.join(scratch, f"torch{r}")))
          continue
        runs["ours (cold)"].append(_ours(gin_file, os.path.join(scratch, f"ours{r}"), cache))
        if FLAGS.warm:
          runs["ours (warm cache)"].append(_ours(gin_file, os.path.join(scratch, f"warm{r}"), cache))
      print(f"round {r}: " + ", ".join(f"{k} {v[-1]['wall_s']:.1f} s" for k, v in runs.items() if v), flush=True)
    median = {k: {f: statistics.median(run[f] for run in v) for f in ("wall_s", "step_s")}
              for k, v in runs.items() if v}
    from gpt3_jax.parallel.hardware import host_line
    print(f"{host_line()}, {FLAGS.steps} steps of {BATCH} x {SEQ} tokens, "
          f"validation every {FLAGS.eval_every} on {FLAGS.eval_batches} batches, {FLAGS.rounds} rounds (median)")
    print(f"{'run':>18} {'wall s':>8} {'step ms':>8} {'last val loss':>14}")
    for k, v in runs.items():
      if v:
        print(f"{k:>18} {median[k]['wall_s']:8.1f} {1e3 * median[k]['step_s']:8.1f} {v[-1]['val_loss']:14.3f}")
    torch_ = median["PyTorch"]
    for k in ("ours (cold)", "ours (warm cache)"):
      if k in median:
        print(f"speed-up, {k}: end to end {torch_['wall_s'] / median[k]['wall_s']:.2f}x, "
              f"step {torch_['step_s'] / median[k]['step_s']:.2f}x")
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
