r"""Our training step against Hugging Face's GPT2LMHeadModel in PyTorch eager, same shapes, interleaved.

  python experiments/peer_benchmark.py                       # the four shapes below
  python experiments/peer_benchmark.py --shapes=0.8m --rounds=8 --gin_bindings="ModelConfig.scan_layers = False"

Each framework runs in its own process (its own thread pools and allocator) and keeps its compiled / built step;
the driver alternates them, `--block_steps` steps at a time for `--rounds` rounds, with a pause between blocks so one's
spinning threads never overlap the other's steps. A step is forward, backward and the optimizer update of the
same model: float32, dense causal attention, no dropout; ours is the real jitted train step (Adam(0.9, 0.95),
weight decay, clip 1.0, donated state), PyTorch's is AdamW with clip_grad_norm_(1.0). Reported: the median step
time of each, tokens/s, and `speed-up` = PyTorch's median / ours (> 1: we are faster). Synthetic random tokens.

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

import multiprocessing as mp
import os
import statistics
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


def compare(name: str, shape: Shape, *, steps: int, rounds: int, pause_s: float, bindings=()) -> dict:
  ctx = mp.get_context("spawn")
  workers = {}
  for kind in ("ours", "pytorch"):  # built one after the other: compilation never overlaps the other's build
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_worker, args=(kind, shape, list(bindings), child), daemon=True)
    process.start()
    child.close()  # the worker holds the only other end: its death ends recv() with EOFError
    description = parent.recv()
    if isinstance(description, Exception):
      raise description
    workers[kind] = (process, parent, description)
  times = {kind: [] for kind in workers}
  try:
    for r in range(rounds + 1):  # round 0 warms up (allocator, caches, first-run dispatch)
      for kind in (("ours", "pytorch") if r % 2 == 0 else ("pytorch", "ours")):  # alternate who goes first
        time.sleep(pause_s)
        workers[kind][1].send(steps)
        block = workers[kind][1].recv()
        if r:
          times[kind] += block
  finally:
    for process, conn, _ in workers.values():
      if process.is_alive():
        conn.send(None)
      process.join(timeout=30)
  ours, theirs = statistics.median(times["ours"]), statistics.median(times["pytorch"])
  tokens = shape.batch * shape.seq
  return {"shape": name, "ours_ms": 1e3 * ours, "pytorch_ms": 1e3 * theirs, "ours_tokens_s": tokens / ours,
          "pytorch_tokens_s": tokens / theirs, "speedup": theirs / ours, "steps_each": len(times["ours"]),
          "ours": workers["ours"][2], "pytorch": workers["pytorch"][2]}


def main(argv):
  del argv
  unknown = [s for s in FLAGS.shapes if s not in SHAPES]
  if unknown:
    raise app.UsageError(f"--shapes: unknown {unknown}; choose from {sorted(SHAPES)}")
  rows = [compare(s, SHAPES[s], steps=FLAGS.block_steps, rounds=FLAGS.rounds, pause_s=FLAGS.pause_s,
                  bindings=FLAGS.gin_bindings) for s in FLAGS.shapes]
  print(f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs; ours: {rows[0]['ours']}; PyTorch: {rows[0]['pytorch']}")
  print(f"{'shape':>6} {'ours ms':>9} {'PyTorch ms':>11} {'ours tok/s':>11} {'PyTorch tok/s':>14} {'speed-up':>9}")
  for r in rows:
    print(f"{r['shape']:>6} {r['ours_ms']:9.1f} {r['pytorch_ms']:11.1f} {r['ours_tokens_s']:11.0f} "
          f"{r['pytorch_tokens_s']:14.0f} {r['speedup']:8.2f}x")
  print(f"(median of {rows[0]['steps_each']} steps each, interleaved in blocks of {FLAGS.block_steps}; speed-up = "
        f"PyTorch step time / ours)")


if __name__ == "__main__":
  app.run(main)
