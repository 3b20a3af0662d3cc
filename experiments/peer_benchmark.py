r"""Our training step against Hugging Face's GPT2LMHeadModel in PyTorch eager (and MaxText's), same shapes, interleaved.

  python experiments/peer_benchmark.py                       # the four shapes below
  python experiments/peer_benchmark.py --shapes=0.8m --rounds=8 --gin_bindings="ModelConfig.scan_layers = False"
  python experiments/peer_benchmark.py --shapes=124m --peers=pytorch,maxtext,maxtext_unrolled \
      --maxtext_python=/tmp/mtvenv/bin/python

Each framework runs in its own process (its own thread pools and allocator) and keeps its compiled / built step;
the driver alternates them, `--block_steps` steps at a time for `--rounds` rounds, with a pause between blocks so one's
spinning threads never overlap the other's steps. A step is forward, backward and the optimizer update of the
same model: float32, dense causal attention, no dropout; ours is the real jitted train step (Adam(0.9, 0.95),
weight decay, clip 1.0, donated state), PyTorch's is AdamW with clip_grad_norm_(1.0); MaxText's is its own jitted
train step in another Python (maxtext_worker.py says how it is configured and installed), with its layers scanned
(`maxtext`, its default) or unrolled (`maxtext_unrolled`). Reported: the median step time of each, tokens/s, and
`vs X` = X's median / ours (> 1: we are faster). Synthetic random tokens.

The ceiling: a fourth process times a square 2048 float32 matmul under XLA:CPU (this repository's jax) in the same
rotation, best of each block, so every framework's model FLOP/s (the PaLM formula of our config, the same model
for all three) reads as a fraction of what this machine's matmul unit gives in float32 at that time. Two
frameworks at fractions f1 and f2 of one ceiling run at a speed ratio of f1 / f2 for the same FLOPs: no framework
can be faster than a 1.0 fraction allows.

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
PEERS = {"pytorch": "PyTorch", "maxtext": "MaxText", "maxtext_unrolled": "MaxText unrolled"}
flags.DEFINE_list("peers", ["pytorch"], "Whom to time against: pytorch, maxtext (its layers scanned, its default), "
                  "maxtext_unrolled (both need --maxtext_python).")
flags.DEFINE_string("maxtext_python", "", "A Python with MaxText installed, for the maxtext peers (maxtext_worker.py).")
flags.DEFINE_string("cpu_devices", "1", "Ours on this many XLA:CPU devices, a data-parallel mesh in one process, "
                    "as `python -m gpt3_jax.main --cpu_devices` runs it ('auto': one per core that divides the batch).")
flags.DEFINE_bool("ceiling", True, "Time a square 2048 float32 matmul in the same rotation and report each "
                  "framework's model FLOP/s as a fraction of it.")
FLAGS = flags.FLAGS


def _ours(shape: Shape, bindings, cpu_devices: str):
  """One step of our jitted train step (experiments/benchmark.py's), blocking until it is done."""
  from gpt3_jax.parallel import cpu_devices as cpu_devices_lib
  from gpt3_jax.parallel import host_memory
  host_memory.retain_freed_memory()  # as `python -m gpt3_jax.main` does, before JAX starts its threads
  cpu_devices_lib.request(cpu_devices, batch=shape.batch)  # before JAX's CPU backend starts, as main does
  import jax
  cfg = _shape_config(shape, bindings)
  compiled, state, batches, lr, _ = benchmark.compiled_train_step(cfg, seq_len=shape.seq, batch_size=shape.batch,
                                                                  num_batches=2)
  holder = {"state": state, "i": 0}

  def step():
    holder["state"], metrics = compiled(holder["state"], batches[holder["i"] % 2], lr)
    holder["i"] += 1
    jax.block_until_ready((holder["state"], metrics))

  return step, (f"jax {jax.__version__} ({cfg.attention_impl} attention, scan_layers={cfg.scan_layers}, "
                f"{jax.device_count()} {jax.default_backend()} devices)")


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


CEILING_N = 2048


def _ceiling():
  """One square CEILING_N float32 matmul under XLA:CPU (benchmark.py's ceiling): the `ceiling` worker's step."""
  import jax
  from gpt3_jax.parallel import hardware
  return hardware.square_matmul(CEILING_N), f"a {CEILING_N}^3 float32 matmul on jax {jax.__version__}"


def _worker(kind: str, shape: Shape, bindings, conn, cpu_devices: str = "1") -> None:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  try:
    step, description = {"ours": lambda: _ours(shape, bindings, cpu_devices), "pytorch": lambda: _pytorch(shape),
                         "ceiling": _ceiling}[kind]()
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

  def __init__(self, kind: str, shape: Shape, bindings, cpu_devices: str = "1"):
    parent, child = mp.get_context("spawn").Pipe()
    self.process = mp.get_context("spawn").Process(
        target=_worker, args=(kind, shape, list(bindings), child, cpu_devices), daemon=True)
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
  if not kind.startswith("maxtext"):
    return _ProcessWorker(kind, shape, bindings, FLAGS.cpu_devices if kind == "ours" else "1")
  worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "maxtext_worker.py")
  return _CommandWorker([maxtext_python, worker, json.dumps(dataclasses.asdict(shape)),
                         "unrolled" if kind == "maxtext_unrolled" else "scan"])


def _shape_config(shape: Shape, bindings=()):
  """Our ModelConfig of `shape`: dense attention, float32, the layer stack unrolled."""
  from gpt3_jax import configs
  base = [f"ModelConfig.n_layers = {shape.n_layers}", f"ModelConfig.d_model = {shape.d_model}",
          f"ModelConfig.n_heads = {shape.n_heads}", f"ModelConfig.d_head = {shape.d_model // shape.n_heads}",
          f"ModelConfig.vocab_size = {shape.vocab}", f"ModelConfig.n_ctx = {shape.seq}",
          "ModelConfig.attention_pattern = 'dense'", "ModelConfig.dtype = 'float32'",
          f"ModelConfig.scan_unroll = {shape.n_layers}"]  # the whole stack unrolled, as quickstart.gin runs on CPU
  return configs.parse_and_build([], base + list(bindings)).model


def compare(name: str, shape: Shape, *, steps: int, rounds: int, pause_s: float, bindings=(),
            peers=("pytorch",), maxtext_python: str = "", ceiling: bool = True) -> dict:
  """Median step seconds of ours and each peer, interleaved; with `ceiling`, each one's model FLOP/s as a fraction
  of the matmul ceiling timed in the same rotation (the median over rounds of each block's best matmul)."""
  from gpt3_jax.model.config import flops_per_token
  kinds = ("ours",) + tuple(peers) + (("ceiling",) if ceiling else ())
  workers = {}
  try:
    for kind in kinds:  # built one after the other: compilation never overlaps another's build
      workers[kind] = _start(kind, shape, bindings, maxtext_python)
    times = {kind: [] for kind in kinds}
    for r in range(rounds + 1):  # round 0 warms up (allocator, caches, first-run dispatch)
      for kind in kinds[r % len(kinds):] + kinds[:r % len(kinds)]:  # rotate who goes first
        time.sleep(pause_s)
        block = workers[kind].run(max(steps, 5) if kind == "ceiling" else steps)
        if r and kind == "ceiling":
          times[kind].append(min(block))  # the block's fastest matmul
        elif r:
          times[kind].extend(block)
  finally:
    for worker in workers.values():
      worker.close()
  matmuls = times.pop("ceiling", None)
  medians = {kind: statistics.median(t) for kind, t in times.items()}
  tokens = shape.batch * shape.seq
  flops = tokens * flops_per_token(_shape_config(shape, bindings), shape.seq)
  row = {"shape": name, "ms": {k: 1e3 * m for k, m in medians.items()},
         "tokens_s": {k: tokens / m for k, m in medians.items()},
         "speedup": {k: medians[k] / medians["ours"] for k in peers}, "steps_each": len(times["ours"]),
         "description": {k: w.description for k, w in workers.items()},
         "model_tflops_s": {k: flops / m / 1e12 for k, m in medians.items()}}
  if matmuls:  # each block's fastest matmul
    row["ceiling_tflops_s"] = 2 * CEILING_N ** 3 / statistics.median(matmuls) / 1e12
    row["of_ceiling"] = {k: v / row["ceiling_tflops_s"] for k, v in row["model_tflops_s"].items()}
  return row


def main(argv):
  del argv
  unknown = [s for s in FLAGS.shapes if s not in SHAPES]
  if unknown:
    raise app.UsageError(f"--shapes: unknown {unknown}; choose from {sorted(SHAPES)}")
  if bad := [p for p in FLAGS.peers if p not in PEERS]:
    raise app.UsageError(f"--peers: unknown {bad}; choose from {', '.join(PEERS)}")
  if any(p.startswith("maxtext") for p in FLAGS.peers) and not os.access(FLAGS.maxtext_python, os.X_OK):
    raise app.UsageError(f"--maxtext_python={FLAGS.maxtext_python!r} is not an executable Python; give one with "
                         "MaxText installed, e.g. --maxtext_python=/tmp/mtvenv/bin/python (see maxtext_worker.py)")
  rows = [compare(s, SHAPES[s], steps=FLAGS.block_steps, rounds=FLAGS.rounds, pause_s=FLAGS.pause_s,
                  bindings=FLAGS.gin_bindings, peers=FLAGS.peers, maxtext_python=FLAGS.maxtext_python,
                  ceiling=FLAGS.ceiling)
          for s in FLAGS.shapes]
  names = {"ours": "ours", "ceiling": "ceiling", **PEERS}
  from gpt3_jax.parallel.hardware import host_line
  print(f"{host_line()}; "
        + "; ".join(f"{names[k]}: {d}" for k, d in rows[0]["description"].items()))
  kinds = ["ours"] + FLAGS.peers
  columns = ([(f"{names[k]} ms", "ms", k, "11.1f") for k in kinds]
             + [(f"{names[k]} tok/s", "tokens_s", k, "14.0f") for k in kinds]
             + [(f"vs {names[k]}", "speedup", k, "10.2f") for k in FLAGS.peers])
  if FLAGS.ceiling:
    columns += [(f"{names[k]} of ceiling", "of_ceiling", k, "10.3f") for k in kinds]
  width = [max(len(title), 11) for title, *_ in columns]
  print(f"{'shape':>10} " + " ".join(f"{title:>{w}}" for (title, *_), w in zip(columns, width))
        + (f" {'ceiling TFLOP/s':>15}" if FLAGS.ceiling else ""))
  for r in rows:
    print(f"{r['shape']:>10} " + " ".join(f"{format(r[key][k], fmt):>{w}}{'x' if key == 'speedup' else ''}"
                                          for (_, key, k, fmt), w in zip(columns, width))
          + (f" {r['ceiling_tflops_s']:15.3f}" if FLAGS.ceiling else ""))
  print(f"(median of {rows[0]['steps_each']} steps each, interleaved in blocks of {FLAGS.block_steps}; vs X = "
        f"X's step time / ours; of ceiling = model FLOP/s (PaLM formula) / the {CEILING_N}^3 float32 matmul's "
        "FLOP/s, its best of each block, median over rounds)")


if __name__ == "__main__":
  app.run(main)
