r"""Our training step against Hugging Face's GPT2LMHeadModel in PyTorch eager (and MaxText's), same shapes, interleaved.

  python experiments/peer_benchmark.py                       # the four shapes below
  python experiments/peer_benchmark.py --shapes=0.8m --rounds=8 --gin_bindings="ModelConfig.scan_layers = False"
  python experiments/peer_benchmark.py --shapes=124m --peers=pytorch,maxtext --maxtext_python=/tmp/mtvenv/bin/python

Each framework runs in its own process (its own thread pools and allocator) and keeps its compiled / built step;
the driver alternates them, `--block_steps` steps at a time for `--rounds` rounds, with a pause between blocks so one's
spinning threads never overlap the other's steps. A step is forward, backward and the optimizer update of the
same model: float32, dense causal attention, no dropout; ours is the real jitted train step (Adam(0.9, 0.95),
weight decay, clip 1.0, donated state), PyTorch's is AdamW with clip_grad_norm_(1.0); MaxText's is its own jitted
train step in another Python (maxtext_worker.py says how it is configured and installed). Reported: the median step
time of each, tokens/s, and `vs X` = X's median / ours (> 1: we are faster). Synthetic random tokens.

Shapes:
  124m   GPT-2 124M: 12 layers, d_model 768, 12 heads, vocab 50257; seq 256, batch 4
  0.8m   4 layers, d_model 128, 4 heads, vocab 65; seq 64, batch 12 (nanoGPT's Shakespeare-char scale)
  tiny   gin_configs/models/tiny.gin (d_model 256, vocab 4096; the quickstart's until it went 128 wide) with dense
         attention; seq 256, batch 8
  quickstart   gin_configs/experiments/quickstart.gin's model (tiny.gin 128 wide, 4 heads) with dense attention;
         seq 256, batch 8
Ours runs its layer stack unrolled (ModelConfig.scan_unroll = n_layers, as quickstart.gin does on CPU).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark  # noqa: E402  same directory: its compiled train step, and its --gin_bindings for our model
from peer_models import SHAPES, Shape, pytorch_model  # noqa: E402  the shapes and the PyTorch model

flags.DEFINE_list("shapes", ["quickstart", "tiny", "0.8m", "124m"], "Which shapes (quickstart, tiny, 0.8m, 124m).")
flags.DEFINE_integer("block_steps", 5, "Steps per block; each round runs one block of each framework.")
flags.DEFINE_integer("rounds", 4, "Rounds of interleaved blocks (after a warm-up block each).")
flags.DEFINE_float("pause_s", 0.5, "Pause between blocks.")
flags.DEFINE_list("peers", ["pytorch"], "Whom to time against: pytorch, maxtext (needs --maxtext_python).")
flags.DEFINE_string("maxtext_python", "", "A Python with MaxText installed, for --peers=maxtext (maxtext_worker.py).")
flags.DEFINE_bool("maxtext_scan_layers", True, "MaxText's layers scanned (its default) or unrolled.")
FLAGS = flags.FLAGS


def _ours(shape: Shape, bindings):
  """One step of our jitted train step (experiments/benchmark.py's), blocking until it is done."""
  from gpt3_jax.parallel import host_memory
  host_memory.retain_freed_memory()  # as `python -m gpt3_jax.main` does, before JAX starts its threads
  import jax
  from gpt3_jax import configs
  base = [f"ModelConfig.n_layers = {shape.n_layers}", f"ModelConfig.d_model = {shape.d_model}",
          f"ModelConfig.n_heads = {shape.n_heads}", f"ModelConfig.d_head = {shape.d_model // shape.n_heads}",
          f"ModelConfig.vocab_size = {shape.vocab}", f"ModelConfig.n_ctx = {shape.seq}",
          "ModelConfig.attention_pattern = 'dense'", "ModelConfig.dtype = 'float32'",
          f"ModelConfig.scan_unroll = {shape.n_layers}"]  # the whole stack unrolled, as quickstart.gin runs on CPU
  cfg = configs.parse_and_build([], base + list(bindings)).model
  compiled, state, batches, lr, _ = benchmark.compiled_train_step(cfg, seq_len=shape.seq, batch_size=shape.batch,
                                                                  num_batches=2)
  holder = {"state": state, "i": 0}

  def step():
    holder["state"], metrics = compiled(holder["state"], batches[holder["i"] % 2], lr)
    holder["i"] += 1
    jax.block_until_ready((holder["state"], metrics))

  return step, f"jax {jax.__version__} ({cfg.attention_impl} attention, scan_layers={cfg.scan_layers})"


def _pytorch(shape: Shape):
  import torch
  import transformers
  model, optimizer = pytorch_model(shape)
  batches = [torch.randint(0, shape.vocab, (shape.batch, shape.seq)) for _ in range(2)]
  holder = {"i": 0}

  def step():
    tokens = batches[holder["i"] % 2]
    holder["i"] += 1
    loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

  return step, (f"torch {torch.__version__} eager, transformers {transformers.__version__} "
                f"({model.config._attn_implementation} attention)")  # pylint: disable=protected-access


def _worker(kind: str, shape: Shape, bindings, conn) -> None:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  try:
    step, description = _ours(shape, bindings) if kind == "ours" else _pytorch(shape)
  except Exception as e:  # the driver reports it instead of waiting
    conn.send(RuntimeError(f"{kind} worker: {type(e).__name__}: {e}"))
    raise
  conn.send(description)
  while (steps := conn.recv()) is not None:
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      step()
      times.append(time.perf_counter() - start)
    conn.send(times)


class _ProcessWorker:
  """A worker in a spawned process of this Python (ours, PyTorch), spoken to through a Pipe."""

  def __init__(self, kind: str, shape: Shape, bindings):
    parent, child = mp.get_context("spawn").Pipe()
    self.process = mp.get_context("spawn").Process(target=_worker, args=(kind, shape, list(bindings), child),
                                                   daemon=True)
    self.process.start()
    child.close()  # the worker holds the only other end: its death ends recv() with EOFError
    self.conn = parent
    self.description = self.conn.recv()
    if isinstance(self.description, Exception):
      raise self.description

  def run(self, steps: int) -> list[float]:
    self.conn.send(steps)
    return self.conn.recv()

  def close(self) -> None:
    if self.process.is_alive():
      self.conn.send(None)
    self.process.join(timeout=30)


class _CommandWorker:
  """A worker in another Python (MaxText's): maxtext_worker.py's line protocol over its stdin and stdout."""

  def __init__(self, command: list[str]):
    self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    self.description = self._read()

  def _read(self):
    line = self.process.stdout.readline()
    if not line:
      raise RuntimeError(f"{self.process.args[1]} exited with {self.process.wait()} (its stderr is above)")
    return json.loads(line)

  def run(self, steps: int) -> list[float]:
    self.process.stdin.write(f"{steps}\n")
    return self._read()

  def close(self) -> None:
    if self.process.poll() is None:
      self.process.stdin.write("0\n")
      self.process.stdin.close()
    self.process.wait(timeout=30)


def _start(kind: str, shape: Shape, bindings, maxtext_python: str):
  if kind != "maxtext":
    return _ProcessWorker(kind, shape, bindings)
  worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "maxtext_worker.py")
  return _CommandWorker([maxtext_python, worker, json.dumps(dataclasses.asdict(shape)),
                         "scan" if FLAGS.maxtext_scan_layers else "unrolled"])


def compare(name: str, shape: Shape, *, steps: int, rounds: int, pause_s: float, bindings=(),
            peers=("pytorch",), maxtext_python: str = "") -> dict:
  kinds = ("ours",) + tuple(peers)
  workers = {}
  try:
    for kind in kinds:  # built one after the other: compilation never overlaps another's build
      workers[kind] = _start(kind, shape, bindings, maxtext_python)
    times = {kind: [] for kind in kinds}
    for r in range(rounds + 1):  # round 0 warms up (allocator, caches, first-run dispatch)
      for kind in kinds[r % len(kinds):] + kinds[:r % len(kinds)]:  # rotate who goes first
        time.sleep(pause_s)
        block = workers[kind].run(steps)
        if r:
          times[kind] += block
  finally:
    for worker in workers.values():
      worker.close()
  medians = {kind: statistics.median(t) for kind, t in times.items()}
  tokens = shape.batch * shape.seq
  return {"shape": name, "ms": {k: 1e3 * m for k, m in medians.items()},
          "tokens_s": {k: tokens / m for k, m in medians.items()},
          "speedup": {k: medians[k] / medians["ours"] for k in peers}, "steps_each": len(times["ours"]),
          "description": {k: w.description for k, w in workers.items()}}


def main(argv):
  del argv
  unknown = [s for s in FLAGS.shapes if s not in SHAPES]
  if unknown:
    raise app.UsageError(f"--shapes: unknown {unknown}; choose from {sorted(SHAPES)}")
  if bad := [p for p in FLAGS.peers if p not in ("pytorch", "maxtext")]:
    raise app.UsageError(f"--peers: unknown {bad}; choose from pytorch, maxtext")
  if "maxtext" in FLAGS.peers and not os.access(FLAGS.maxtext_python, os.X_OK):
    raise app.UsageError(f"--maxtext_python={FLAGS.maxtext_python!r} is not an executable Python; give one with "
                         "MaxText installed, e.g. --maxtext_python=/tmp/mtvenv/bin/python (see maxtext_worker.py)")
  rows = [compare(s, SHAPES[s], steps=FLAGS.block_steps, rounds=FLAGS.rounds, pause_s=FLAGS.pause_s,
                  bindings=FLAGS.gin_bindings, peers=FLAGS.peers, maxtext_python=FLAGS.maxtext_python)
          for s in FLAGS.shapes]
  names = {"ours": "ours", "pytorch": "PyTorch", "maxtext": "MaxText"}
  print(f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs; "
        + "; ".join(f"{names[k]}: {d}" for k, d in rows[0]["description"].items()))
  kinds = ["ours"] + FLAGS.peers
  print(f"{'shape':>10} " + " ".join(f"{names[k] + ' ms':>11}" for k in kinds) + " "
        + " ".join(f"{names[k] + ' tok/s':>14}" for k in kinds) + " "
        + " ".join(f"{'vs ' + names[k]:>11}" for k in FLAGS.peers))
  for r in rows:
    print(f"{r['shape']:>10} " + " ".join(f"{r['ms'][k]:11.1f}" for k in kinds) + " "
          + " ".join(f"{r['tokens_s'][k]:14.0f}" for k in kinds) + " "
          + " ".join(f"{r['speedup'][k]:10.2f}x" for k in FLAGS.peers))
  print(f"(median of {rows[0]['steps_each']} steps each, interleaved in blocks of {FLAGS.block_steps}; vs X = "
        f"X's step time / ours)")


if __name__ == "__main__":
  app.run(main)
