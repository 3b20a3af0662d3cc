r"""Where a CPU train step's time goes: one profiled step, its XLA ops grouped by the model part they come from.

  python experiments/profile_step.py --gin_file=gin_configs/models/small.gin \
      --gin_bindings="ModelConfig.scan_layers = False" --seq_len=256 --batch_size=4

Traces one steady-state step with jax.profiler (XLA:CPU thunk events), splits time shared by concurrent ops evenly,
and sums it per group (from each op's op_name metadata); matmul groups also print their FLOP/s (their FLOPs
counted from the config) against the float32 matmul ceiling measured in the same run. Eigen dots (some weight gradients) finish
asynchronously, so part of their time shows as "between ops" and their group's FLOP/s reads high. CPU only: on GPU/TPU use the TensorBoard profiler on the same trace.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import re
import sys
import tempfile
import time

from absl import app, flags

import benchmark  # same directory: its flags (--gin_file, --seq_len, ...) and its compiled train step

flags.DEFINE_integer("top", 15, "Also list this many of the costliest ops.")
FLAGS = flags.FLAGS

_OP = re.compile(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) .*?op_name=\"([^\"]*)\"")


def group_of(op_name: str, is_matmul: bool) -> str:
  kind = "matmuls" if is_matmul else "elementwise"
  if "/cond/" in op_name:
    return "optimizer update"
  if "logits" in op_name:
    return f"LM head {kind}"
  if "/attention/" in op_name:
    if "dshk" in op_name or "hkd->btd" in op_name:
      return f"attention projections {kind}"
    return "attention core (scores, softmax, values)"
  if "/mlp/" in op_name:
    return f"MLP {kind}"
  if "/ln_" in op_name:
    return "layer norms"
  return "other (loss, embeddings, gradient norm, ...)"


def _thunk_events(trace_dir: str) -> list:
  path = glob.glob(f"{trace_dir}/plugins/profile/*/perfetto_trace.json.gz")[0]
  trace = json.load(gzip.open(path))
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
           if e.get("ph") == "M" and e.get("name") == "thread_name"}
  return [e for e in events if e.get("ph") == "X" and "Eigen" in names.get((e["pid"], e["tid"]), "")
          and e["name"] != "ThunkExecutor::Execute" and not e["name"].startswith(("end:", "Threadpool", "Slinky"))]


def _exclusive_time(events: list) -> tuple:
  """Per-event time with overlaps split evenly, and the time no traced op was running (microseconds)."""
  bounds = sorted({e["ts"] for e in events} | {e["ts"] + e["dur"] for e in events})
  ordered = sorted(events, key=lambda e: e["ts"])
  share, idle, active, j = collections.defaultdict(float), 0.0, [], 0
  for start, end in zip(bounds, bounds[1:]):
    while j < len(ordered) and ordered[j]["ts"] <= start:
      active.append(ordered[j])
      j += 1
    active = [e for e in active if e["ts"] + e["dur"] > start]
    if not active:
      idle += end - start
    for e in active:
      share[id(e)] += (end - start) / len(active)
  return share, idle


def matmul_flops(cfg, batch: int, seq: int) -> dict:
  """Matmul FLOPs of one training step (forward + backward = 3x forward) per group, as the model computes them
  (the attention core's are the block-sparse products actually computed, fewer than the PaLM formula counts)."""
  from gpt3_jax.model.attention import model_pairs_computed

  tokens, layers = batch * seq, cfg.n_layers
  return {
      "MLP matmuls": 3 * 2 * tokens * 2 * cfg.d_model * cfg.mlp_width * layers,
      "attention projections matmuls": 3 * 2 * tokens * 4 * cfg.d_model * cfg.attn_width * layers,
      "LM head matmuls": 3 * 2 * tokens * cfg.d_model * cfg.padded_vocab_size,
      "attention core (scores, softmax, values)":
          3 * 2 * 2 * batch * cfg.n_heads * cfg.d_head * model_pairs_computed(cfg, seq),
  }


def main(argv):
  del argv
  from gpt3_jax.parallel import host_memory

  if FLAGS.retain_host_memory:
    host_memory.retain_freed_memory()  # before JAX starts its thread pools
  import jax

  from gpt3_jax.model.config import flops_per_token
  from gpt3_jax.parallel import hardware

  cfg = benchmark.model_config_from_flags()
  compiled, state, (batch,), lr, _ = benchmark.compiled_train_step(cfg, seq_len=FLAGS.seq_len,
                                                                   batch_size=FLAGS.batch_size, num_batches=1)
  ops = {m.group(1): m.group(3) for m in map(_OP.match, compiled.as_text().splitlines()) if m}
  for _ in range(4):  # steady state (the allocator keeps the scratch memory after a few steps)
    state, metrics = compiled(state, batch, lr)
    jax.block_until_ready(metrics)
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    start = time.perf_counter()
    state, metrics = compiled(state, batch, lr)
    jax.block_until_ready(metrics)
    wall = time.perf_counter() - start
    jax.profiler.stop_trace()
    events = _thunk_events(trace_dir)
  ceiling = hardware.measure_matmul_flops(n=2048)
  share, idle = _exclusive_time(events)
  groups, per_op = collections.defaultdict(float), collections.defaultdict(float)
  for e in events:
    op_name = ops.get(e["name"], "")
    groups[group_of(op_name, e["name"].startswith(("ynn_fusion", "dot")))] += share[id(e)]
    where = re.sub(r"jit\([^)]*\)/|jvp\(|\)|layers(_\d+)?/", "", op_name).replace("transpose(", "backward ")
    kind = re.sub(r"[.][0-9]+$", "", e["name"])
    per_op[f"{kind:24s} {where[-80:]}"] += share[id(e)]
  model_flops = FLAGS.batch_size * FLAGS.seq_len * flops_per_token(cfg, FLAGS.seq_len)
  print(f"profiled step {wall:.3f} s (with tracing); model FLOP/s {model_flops / wall / 1e12:.3f} T; "
        f"float32 matmul ceiling {ceiling / 1e12:.3f} T")
  flops = matmul_flops(cfg, FLAGS.batch_size, FLAGS.seq_len)
  print(f"{'group':44s} {'ms':>8s} {'share':>6s}  matmul FLOP/s (of ceiling)")
  for name, us in sorted(groups.items(), key=lambda kv: -kv[1]) + [("between ops (incl. async Eigen dots)", idle)]:
    rate = f"  {flops[name] / us / 1e6:.3f} T ({flops[name] / us * 1e6 / ceiling:.0%})" if name in flops else ""
    print(f"{name:44s} {us / 1e3:8.1f} {us / 1e6 / wall:6.1%}{rate}")
  print("\ncostliest ops (ms, summed over layers):")
  for name, us in sorted(per_op.items(), key=lambda kv: -kv[1])[:FLAGS.top]:
    print(f"{us / 1e3:8.1f}  {name}")


if __name__ == "__main__":
  sys.path.insert(0, ".")
  app.run(main)
