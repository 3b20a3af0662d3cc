"""`--mode=plan`: what a configuration costs on a given mesh and chip, computed without allocating the model.

Per-device memory of the train state comes from the real sharded abstract state: `jax.eval_shape` of the
state's creation (the same code as training), the logical axis names of every leaf, the one rules table
(gpt3_jax/parallel/mesh.py) on an abstract mesh of the planned shape, and each leaf's shard shape. Activations
are an explicit estimate (`activation_bytes`); FLOPs use the PaLM formula of gpt3_jax/model/config.py.

Memory model per device (bytes), for the configured remat policy:
  params + gradients + optimizer state + activations, and the plan fits when this is at most
  USABLE_MEMORY_FRACTION of the chip's memory (XLA needs the rest for temporaries and fragmentation).
  gradients: in param_dtype (float32 by default), sharded like the params; with gradient accumulation
  (microbatches > 1) twice that (the running sum and one microbatch's gradient).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import AbstractMesh, AxisType, PartitionSpec as P

from gpt3_jax.model.attention import model_pairs_computed
from gpt3_jax.model.config import REMAT_POLICIES, ModelConfig, flops_per_token, param_counts, resolve_dtype
from gpt3_jax.parallel import hardware
from gpt3_jax.parallel import mesh as mesh_lib
from gpt3_jax.training import optimizer as optimizer_lib
from gpt3_jax.training import train_state

# Memory per chip in GB (HBM; 1 GB = 1e9 bytes). A100 / H100 in their 80 GB versions.
CHIP_MEMORY_GB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32, "a100": 80, "h100": 80, "h200": 141}
USABLE_MEMORY_FRACTION = 0.9


def count_abstract_params(cfg: ModelConfig) -> int:
  """Parameters of the real Flax model (padded vocabulary included), from shapes only."""
  shapes = jax.eval_shape(lambda r: nn.unbox(train_state.init_params_fn(cfg)(r)), jax.random.key(0))
  return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))


# ---------------------------------------------------------------------------------------------------------------
# The sharded train state, per device


def make_tx(opt_cfg: Optional[optimizer_lib.OptimizerConfig] = None, cfg: Optional[ModelConfig] = None
            ) -> optax.GradientTransformation:
  """The training optimizer (its state's structure is what matters here, not its hyper-parameters): with LoRA or
  frozen parameters, state only for the trained ones."""
  return optimizer_lib.make_optimizer(optimizer_lib.for_model(opt_cfg or optimizer_lib.OptimizerConfig(), cfg))


def state_layout(cfg: ModelConfig, tx: optax.GradientTransformation) -> Tuple[Any, Any]:
  """(shapes, logical specs) of every TrainState leaf: ShapeDtypeStructs from jax.eval_shape, and the logical
  PartitionSpecs that train_state.state_shardings maps through the rules table (optimizer moments like their
  params, scalars replicated)."""
  param_specs = train_state.param_logical_specs(cfg)
  shapes = train_state.state_shapes(cfg, tx)
  opt_specs = train_state.opt_state_shardings(shapes.opt_state, shapes.params, param_specs, P())
  return shapes, train_state.TrainState(step=P(), params=param_specs, opt_state=opt_specs)


def abstract_mesh(shape: Sequence[int]) -> AbstractMesh:
  """A mesh of the planned shape without devices: enough for shardings and shard shapes."""
  return AbstractMesh(tuple(shape), mesh_lib.MESH_AXES, axis_types=(AxisType.Auto,) * len(mesh_lib.MESH_AXES))


def _shard_bytes(leaf: jax.ShapeDtypeStruct, sharding) -> int:
  spec = tuple(sharding.spec) + (None,) * (len(leaf.shape) - len(sharding.spec))
  sizes = dict(zip(sharding.mesh.axis_names, sharding.mesh.axis_sizes))
  shard = []
  for dim, axes in zip(leaf.shape, spec):
    names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
    shard.append(-(-dim // math.prod(sizes[n] for n in names)))  # uneven: the padded shard
  return math.prod(shard) * jnp.dtype(leaf.dtype).itemsize


def state_bytes_per_device(shapes: Any, logical: Any, mesh_shape: Sequence[int]) -> Dict[str, int]:
  """Bytes of the largest shard of params / optimizer state / step on one device of a mesh of `mesh_shape`."""
  shardings = mesh_lib.logical_to_sharding(logical, abstract_mesh(mesh_shape))
  per_leaf = jax.tree.map(_shard_bytes, shapes, shardings)
  return {name: sum(jax.tree.leaves(getattr(per_leaf, name))) for name in ("params", "opt_state", "step")}


# ---------------------------------------------------------------------------------------------------------------
# Activations: an explicit estimate


def activation_bytes(cfg: ModelConfig, mesh_shape: Sequence[int], rows: int, seq_len: int) -> Dict[str, int]:
  """Activation memory per device for each remat policy (bytes), for `rows` sequences per device per microbatch.

  With b = rows, T = seq_len, d = d_model, a = n_heads * d_head, f = d_ff, h = n_heads, t = tensor size,
  e = bytes of the compute dtype, V = padded vocab, L = n_layers, and u = layers per scanned unit (2 for the
  alternating pattern, else 1), one layer keeps for the backward pass (elements):
    replicated over t:  6 * b*T*d   (block input, ln_1 out, attention out, mid residual, ln_2 out, MLP out)
    split over t:       b*T*(4a + 2f) / t   (q, k, v, attention context; MLP hidden before and after GELU)
    attention probs:    b*h*P / t  (xla implementation only; flash kernels keep O(b*h*T) statistics), P the
                        (query, key) pairs it computes (T*T in one block; fewer block-sparse), averaged
                        over the layers' windows
  Policies, per device:
    none:                        L * layer
    full:                        L * b*T*d (the scan carry) + u * layer (recomputing one unit in the backward)
    save_dots:                   L * b*T*(3d + (3a + f)/t) (carry + matmul outputs without batch dims:
                                 qkv, attention out, MLP in, MLP out) + u * layer
    save_attention_mlp_outputs:  L * 3 * b*T*d (carry + the named attention / MLP outputs) + u * layer
  All at e bytes except the carry (in e too); plus, for every policy, the logits and their gradient
  2 * b*T*V/t * (bytes of cfg.logits_dtype), and one unit's weights gathered over fsdp in the compute dtype,
  twice (prefetch): 2 * u * (4d*a + 2d*f) / t * e.
  """
  t = mesh_shape[2]
  e = jnp.dtype(resolve_dtype(cfg.dtype, "gpu")).itemsize  # plans are for accelerators ('auto' is bfloat16)
  b, d, a, f, h, n = rows, cfg.d_model, cfg.attn_width, cfg.mlp_width, cfg.n_heads, cfg.n_layers
  u = 1 if cfg.attention_pattern == "dense" else 2
  bt = b * seq_len
  pairs = model_pairs_computed(cfg, seq_len) / n  # per layer, averaged over dense and local
  probs = 0 if cfg.attention_impl != "xla" else b * h * pairs / t
  layer = 6 * bt * d + bt * (4 * a + 2 * f) / t + probs
  logits = 2 * bt * cfg.padded_vocab_size / t * jnp.dtype(cfg.logits_dtype).itemsize
  fixed_bytes = logits + 2 * u * (4 * d * a + 2 * d * f) / t * e
  saved = {
      "none": n * layer,
      "full": n * bt * d + u * layer,
      "save_dots": n * bt * (3 * d + (3 * a + f) / t) + u * layer,
      "save_attention_mlp_outputs": n * 3 * bt * d + u * layer,
  }
  assert set(saved) == set(REMAT_POLICIES)
  return {name: int(elements * e + fixed_bytes) for name, elements in saved.items()}


# ---------------------------------------------------------------------------------------------------------------
# One mesh: memory and fit


@dataclasses.dataclass(frozen=True)
class Workload:
  """What is being planned: global batch (sequences), sequence length, microbatches, chip memory (bytes)."""

  global_batch: int
  seq_len: int
  num_microbatches: int
  memory_bytes: float


def mesh_problem(cfg: ModelConfig, mesh_shape: Sequence[int], work: Workload) -> Optional[str]:
  """Why a mesh cannot run this batch / model at all (indivisible batch or tensor split), or None."""
  data, fsdp, tensor = mesh_shape
  dp = data * fsdp
  if work.global_batch % (dp * work.num_microbatches):
    return (f"global batch {work.global_batch} does not split into {work.num_microbatches} microbatch(es) over "
            f"data x fsdp = {dp}")
  for name, size in (("n_heads", cfg.n_heads), ("d_ff", cfg.mlp_width), ("padded vocab", cfg.padded_vocab_size)):
    if size % tensor:
      return f"tensor {tensor} does not divide {name} {size}"
  return None


def memory_plan(cfg: ModelConfig, shapes: Any, logical: Any, mesh_shape: Sequence[int],
                work: Workload) -> Dict[str, Any]:
  """Per-device bytes of each part and the totals for every remat policy, with `fits` for the configured one."""
  data, fsdp, _ = mesh_shape
  state = state_bytes_per_device(shapes, logical, mesh_shape)
  grads = state["params"] * (2 if work.num_microbatches > 1 else 1)
  rows = work.global_batch // (data * fsdp * work.num_microbatches)
  acts = activation_bytes(cfg, mesh_shape, rows, work.seq_len)
  base = state["params"] + grads + state["opt_state"] + state["step"]
  totals = {policy: base + acts[policy] for policy in acts}
  return {
      "mesh": list(mesh_shape), "rows_per_device": rows,
      "params_bytes": state["params"], "grads_bytes": grads, "opt_state_bytes": state["opt_state"],
      "step_bytes": state["step"],
      "activation_bytes": acts, "total_bytes": totals,
      "fits": totals[cfg.remat_policy] <= USABLE_MEMORY_FRACTION * work.memory_bytes,
      "fits_by_policy": {p: v <= USABLE_MEMORY_FRACTION * work.memory_bytes for p, v in totals.items()},
  }


def mesh_candidates(num_devices: int) -> Iterator[Tuple[int, int, int]]:
  """Every (data, fsdp, tensor) with product num_devices; least model parallelism first (tensor, then fsdp)."""
  divisors = [k for k in range(1, num_devices + 1) if num_devices % k == 0]
  for tensor in divisors:
    for fsdp in divisors:
      if (num_devices // tensor) % fsdp == 0:
        yield (num_devices // tensor // fsdp, fsdp, tensor)


def suggest(cfg: ModelConfig, shapes: Any, logical: Any, num_devices: int,
            work: Workload) -> Optional[Dict[str, Any]]:
  """The first mesh of the same device count that fits (configured remat policy first, then any policy in the
  order full < save_attention_mlp_outputs < save_dots < none of increasing memory), or None."""
  policies = [cfg.remat_policy] + [p for p in ("save_dots", "save_attention_mlp_outputs", "full")
                                   if p != cfg.remat_policy]
  candidates = [m for m in mesh_candidates(num_devices) if mesh_problem(cfg, m, work) is None]
  plans = {m: memory_plan(cfg, shapes, logical, m, work) for m in candidates}
  for policy in policies:
    for mesh_shape, plan in plans.items():
      if plan["fits_by_policy"][policy]:
        return {"mesh": list(mesh_shape), "remat_policy": policy, "total_bytes": plan["total_bytes"][policy]}
  return None


def min_devices_to_fit(cfg: ModelConfig, shapes: Any, logical: Any, num_devices: int,
                       work: Workload, limit: int = 1 << 16) -> Optional[Dict[str, Any]]:
  """The smallest power-of-two multiple of num_devices where some mesh fits (as `suggest`, plus 'devices'),
  or None up to `limit` devices."""
  n = num_devices * 2
  while n <= limit:
    found = suggest(cfg, shapes, logical, n, work)
    if found:
      return dict(found, devices=n)
    n *= 2
  return None


# ---------------------------------------------------------------------------------------------------------------
# The report


def resolve_plan_mesh(mesh_shape: Sequence[int], num_devices: Optional[int]) -> Tuple[Tuple[int, ...], int]:
  """(mesh shape, device count): a -1 takes what --plan_devices leaves; without --plan_devices a full shape
  gives the count, and a shape with -1 assumes 8 devices (one host)."""
  shape = tuple(int(s) for s in mesh_shape)
  if num_devices is None:
    num_devices = math.prod(shape) if -1 not in shape else 8
  try:
    return mesh_lib.resolve_mesh_shape(shape, num_devices), num_devices
  except ValueError as e:
    raise ValueError(f"--plan_mesh {shape} with --plan_devices={num_devices}: {str(e).split(';')[0]}") from None


def plan_report(cfg: ModelConfig, *, mesh_shape: Sequence[int] = (-1, 1, 1), num_devices: Optional[int] = None,
                chip: str = "h100", global_batch: int = 8, seq_len: Optional[int] = None,
                num_microbatches: int = 1, mfu: float = 0.4, chip_memory_gb: Optional[float] = None,
                compile: bool = False, optimizer: Optional[optimizer_lib.OptimizerConfig] = None,
                topology: Optional[str] = None) -> Dict[str, Any]:
  """Everything `--mode=plan` prints, as one JSON-serializable dict (counts and FLOPs stay at the top level).

  `topology` (e.g. 'v5e:2x2', gpt3_jax/plan_compile.py) compiles the real step for that TPU slice: the chip and
  the device count come from it."""
  if topology:
    from gpt3_jax import plan_compile
    chip, num_devices = plan_compile.parse_topology(topology)
    plan_compile.check_libtpu()
  cfg = cfg.resolved(hardware.chip_platform(chip))  # dtype 'auto' means what it would on that chip
  counts = param_counts(cfg)
  stored = count_abstract_params(cfg)
  if stored != param_counts(cfg, padded=True)["params"]:
    raise AssertionError(f"closed-form count {param_counts(cfg, padded=True)['params']} != model's {stored}")
  seq_len = seq_len or cfg.n_ctx
  if seq_len > cfg.n_ctx:
    raise ValueError(f"plan seq_len {seq_len} exceeds the model's n_ctx {cfg.n_ctx}")
  if mfu <= 0 or mfu > 1:
    raise ValueError(f"--plan_mfu must be in (0, 1], got {mfu}")
  shape, n = resolve_plan_mesh(mesh_shape, num_devices)
  memory_gb = chip_memory_gb if chip_memory_gb is not None else CHIP_MEMORY_GB[chip]
  work = Workload(global_batch, seq_len, num_microbatches, memory_gb * 1e9)
  problem = mesh_problem(cfg, shape, work)
  if problem:
    raise ValueError(f"plan mesh {shape}: {problem}")

  tx = make_tx(optimizer, cfg)
  shapes, logical = state_layout(cfg, tx)
  memory = memory_plan(cfg, shapes, logical, shape, work)
  suggestion = None if memory["fits"] else suggest(cfg, shapes, logical, n, work)
  needed = None
  if not memory["fits"] and suggestion is None:
    needed = min_devices_to_fit(cfg, shapes, logical, n, work)

  flops_token = flops_per_token(cfg, seq_len)
  tokens_step = global_batch * seq_len
  peak = hardware.chip_peak_flops(chip)
  step_s = flops_token * tokens_step / (n * peak * mfu)
  report = {
      "params": counts["params"],
      "non_embedding_params": counts["non_embedding_params"],
      "stored_params": stored,
      "flops_per_token": flops_token,
      "n_ctx": cfg.n_ctx, "n_layers": cfg.n_layers, "d_model": cfg.d_model, "n_heads": cfg.n_heads,
      "d_head": cfg.d_head, "vocab_size": cfg.vocab_size, "padded_vocab_size": cfg.padded_vocab_size,
      "attention_pattern": cfg.attention_pattern, "local_window": cfg.local_window,
      "dtype": cfg.dtype, "param_dtype": cfg.param_dtype, "remat_policy": cfg.remat_policy,
      "chip": chip, "devices": n, "chip_memory_gb": memory_gb, "peak_flops_per_chip": peak,
      "global_batch": global_batch, "seq_len": seq_len, "num_microbatches": num_microbatches,
      "tokens_per_step": tokens_step, "flops_per_step": flops_token * tokens_step, "assumed_mfu": mfu,
      "step_seconds": step_s, "tokens_per_day": tokens_step / step_s * 86400.0,
      "memory": memory, "fits": memory["fits"], "suggestion": suggestion, "min_devices_to_fit": needed,
  }
  if compile or topology:
    from gpt3_jax import plan_compile
    report["compiled"] = plan_compile.compile_memory(cfg, shape, global_batch, seq_len, num_microbatches,
                                                     topology=topology)
  return report


def _gb(x: float) -> str:
  return f"{x / 1e9:,.2f} GB"


def format_report(report: Dict[str, Any]) -> str:
  mem = report["memory"]
  policy = report["remat_policy"]
  lines = [
      f"model: {report['n_layers']} layers, d_model {report['d_model']}, {report['n_heads']} heads x "
      f"{report['d_head']}, n_ctx {report['n_ctx']}, vocab {report['vocab_size']} (padded "
      f"{report['padded_vocab_size']}), attention {report['attention_pattern']}, {report['dtype']} compute, "
      f"{report['param_dtype']} parameters",
      f"parameters: {report['params'] / 1e6:,.1f}M total, {report['non_embedding_params'] / 1e6:,.1f}M "
      f"non-embedding ({report['stored_params'] / 1e6:,.1f}M stored with the padded vocabulary)",
      f"model FLOPs per token (6N + 12LHQT): {report['flops_per_token']:.4g}",
      f"plan: {report['devices']} x {report['chip']} ({report['chip_memory_gb']:g} GB each), mesh (data, fsdp, "
      f"tensor) = {tuple(mem['mesh'])}, global batch {report['global_batch']} x {report['seq_len']} tokens, "
      f"{report['num_microbatches']} microbatch(es), {mem['rows_per_device']} row(s) per device per microbatch",
      f"per device: params {_gb(mem['params_bytes'])}, gradients {_gb(mem['grads_bytes'])}, optimizer state "
      f"{_gb(mem['opt_state_bytes'])}",
      "activations by remat policy (estimate; total with the state):",
  ]
  for name, acts in mem["activation_bytes"].items():
    mark = " <- configured" if name == policy else ""
    lines.append(f"  {name:27s} {_gb(acts):>14s}   total {_gb(mem['total_bytes'][name]):>14s}"
                 f"{'' if mem['fits_by_policy'][name] else '  (does not fit)'}{mark}")
  budget = USABLE_MEMORY_FRACTION * report["chip_memory_gb"] * 1e9
  if report["fits"]:
    lines.append(f"FITS: {_gb(mem['total_bytes'][policy])} of {_gb(budget)} usable "
                 f"({USABLE_MEMORY_FRACTION:.0%} of the chip) with remat_policy={policy}")
  else:
    lines.append(f"DOES NOT FIT: {_gb(mem['total_bytes'][policy])} per device > {_gb(budget)} usable "
                 f"({USABLE_MEMORY_FRACTION:.0%} of {report['chip_memory_gb']:g} GB) with mesh {tuple(mem['mesh'])} "
                 f"and remat_policy={policy}")
    s = report["suggestion"]
    if s:
      lines.append(f"  suggestion: MeshConfig.shape = {tuple(s['mesh'])}, ModelConfig.remat_policy = "
                   f"'{s['remat_policy']}' -> {_gb(s['total_bytes'])} per device (--plan_mesh="
                   f"{','.join(map(str, s['mesh']))})")
    elif report["min_devices_to_fit"]:
      m = report["min_devices_to_fit"]
      lines.append(f"  no mesh of {report['devices']} devices fits with any remat policy; the smallest power-of-two "
                   f"multiple that fits is {m['devices']} devices: MeshConfig.shape = {tuple(m['mesh'])}, "
                   f"ModelConfig.remat_policy = '{m['remat_policy']}' -> {_gb(m['total_bytes'])} per device "
                   f"(--plan_devices={m['devices']} --plan_mesh={','.join(map(str, m['mesh']))})")
    else:
      lines.append("  no mesh fits even at many more devices: lower the batch per device (microbatches)")
  lines.append(f"compute: {report['flops_per_step']:.4g} FLOPs per step; at {report['assumed_mfu']:.0%} MFU on "
               f"{report['devices']} x {report['chip']} ({report['peak_flops_per_chip'] / 1e12:g} TFLOP/s peak): "
               f"{report['step_seconds']:.4g} s per step, {report['tokens_per_day'] / 1e9:,.3f}B tokens per day")
  compiled = report.get("compiled")
  if compiled:
    lines.extend(format_compiled(report, compiled))
  return "\n".join(lines)


def state_bytes(memory: Dict[str, Any]) -> int:
  """The train state's bytes per device in a memory plan: params, optimizer state and the step counter (what
  XLA counts among a compiled step's arguments, beside the batch and the learning rate)."""
  return memory["params_bytes"] + memory["opt_state_bytes"] + memory["step_bytes"]


def format_compiled(report: Dict[str, Any], compiled: Dict[str, Any]) -> list:
  """The XLA compile's lines: per-chip memory against the estimate and the chip, FLOPs against the formula."""
  if "skipped" in compiled:
    return [f"XLA compile: skipped ({compiled['skipped']})"]
  if "failed" in compiled:
    return [f"XLA compile: FAILED: {compiled['failed']}"]
  mem, policy = report["memory"], report["remat_policy"]
  where = (f"{compiled['devices']} abstract {compiled['topology']} TPU chips" if compiled.get("topology")
           else f"{compiled['devices']} fake CPU devices")
  lines = [f"XLA compile on {where} in {compiled['compile_seconds']:.1f} s, per device: arguments "
           f"{_gb(compiled['argument_bytes'])} (planner's state {_gb(state_bytes(mem))}), "
           f"temporaries {_gb(compiled['temp_bytes'])}, outputs {_gb(compiled['output_bytes'])} (aliased "
           f"{_gb(compiled['alias_bytes'])}); peak ~ {_gb(compiled['peak_bytes'])} vs estimate "
           f"{_gb(mem['total_bytes'][policy])} ({compiled['peak_bytes'] / mem['total_bytes'][policy] - 1:+.0%})"]
  if compiled.get("flops"):
    planned = report["flops_per_step"] / report["devices"]
    note = (" (a scanned layer stack's loop body is counted once: ModelConfig.scan_layers=False gives the whole "
            "count)" if compiled.get("scanned") else "")
    lines.append(f"XLA FLOPs per device per step {compiled['flops']:.4g} vs the formula's {planned:.4g} "
                 f"({compiled['flops'] / planned - 1:+.0%}){note}")
  if compiled.get("topology"):
    hbm = report["chip_memory_gb"] * 1e9
    if compiled["peak_bytes"] <= hbm:
      lines.append(f"compiled FITS: {_gb(compiled['peak_bytes'])} of {_gb(hbm)} HBM per chip")
    else:
      s = report["suggestion"]
      hint = (f"; planner's suggestion: MeshConfig.shape = {tuple(s['mesh'])}, remat_policy = '{s['remat_policy']}'"
              if s else "; try ModelConfig.remat_policy='full', more microbatches or a larger slice")
      lines.append(f"compiled DOES NOT FIT: {_gb(compiled['peak_bytes'])} > {_gb(hbm)} HBM per chip{hint}")
  return lines
