r"""Entry point: `python -m gpt3_jax.main --gin_file=... [--gin.NAME=VALUE ...] --workdir=DIR [--mode=...]`.

Modes:
  train   (default) train or resume in --workdir; prints the final validation loss next to the unigram baseline
          and a sampled continuation.
  finetune  fine-tune TrainConfig.init_from on FinetuneConfig's prompt / completion JSONL in --workdir: the loss
          counts only the completions; resumes like train (docs/finetuning.md).
  plan    what the configured model costs on a mesh and chip, without allocating it: parameter counts, per-device
          memory of params / gradients / optimizer state / activations, FLOPs, step time and tokens per day at
          an assumed MFU, and whether it fits (else a mesh that does); --plan_* flags, --json (gpt3_jax/planner.py).
  sample  continue --prompt (or each line of --prompt_file) with the newest checkpoint in --workdir, or with a
          Hugging Face import (`python -m gpt3_jax.convert --from_hf`) and its tokenizer.
  score   one JSON line per text (--prompt / --prompt_file): token ids, per-token log-probs and their total.
  sweep   an Optuna study in --workdir (SweepConfig: the search space over gin bindings, sampler, pruner and its
          SQLite or PostgreSQL storage); each trial trains in WORKDIR/trial_<n>; several workers may share the
          storage; results.csv / .md, plots and HParams summaries (docs/sweeps.md).
  eval    zero- / one- / few-shot tasks and perplexity like the paper (--tasks, --num_fewshot, --task_dir;
          docs/evaluation.md): a table, WORKDIR/eval/results_step<N>.json and TensorBoard scalars.

gin files configure the config dataclasses (ModelConfig, DataConfig, OptimizerConfig, MeshConfig,
TrainConfig, FinetuneConfig, SweepConfig); later files and bindings override earlier ones. The operative config is
written to the workdir once the run's configuration is checked (and, on resume, found compatible with its
checkpoint). Each mode is a module of gpt3_jax/modes/.

Multi-process runs: --coordinator_address, --num_processes and --process_id on every process, or none of them
inside a SLURM / Open MPI / multi-host TPU job (detected automatically); see docs/scaling.md.
"""

from __future__ import annotations

import logging as std_logging
import sys
from typing import List, Sequence

from absl import app, flags, logging

from gpt3_jax.errors import UserError, one_line_errors
from gpt3_jax.parallel import host_memory

flags.DEFINE_multi_string("gin_file", [], "gin config files, applied in order.")
flags.DEFINE_multi_string("gin_bindings", [], "gin bindings, e.g. 'TrainConfig.train_steps = 10'.")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the operative config.")
flags.DEFINE_enum("mode", "train", ["train", "finetune", "plan", "sample", "score", "eval", "sweep"], "What to do.")
flags.DEFINE_bool("json", False, "plan / score: print machine-readable JSON.")
flags.DEFINE_bool("retain_host_memory", True, "Keep freed host memory for reuse instead of returning it to the OS "
                  "(glibc): XLA:CPU then stops page-faulting its scratch memory in every step. See "
                  "gpt3_jax/parallel/host_memory.py.")
flags.DEFINE_bool("compilation_cache", True, "Keep compiled steps in JAX's persistent compilation cache, so the "
                  "second start of the same experiment skips compilation (gpt3_jax/parallel/compile_cache.py).")
flags.DEFINE_string("compilation_cache_dir", None, "Where the compilation cache lives (default: "
                    "$GPT3_JAX_COMPILATION_CACHE_DIR or ~/.cache/gpt3_jax/jax_compilation_cache).")
flags.DEFINE_string("cpu_devices", "1", "train / finetune on a CPU: split the CPU into this many XLA devices, a "
                    "data-parallel mesh inside one process, or 'auto': one per core, as many as fill "
                    "MeshConfig.shape with a data-parallel size dividing the (micro)batch. XLA:CPU runs a batched "
                    "matmul on one core; one device per core runs the attention's small products in parallel "
                    "(gpt3_jax/parallel/cpu_devices.py). A GPU / TPU run's devices stay the accelerators.")
flags.DEFINE_string("prompt", None, "sample / score: one text.")
flags.DEFINE_string("prompt_file", None, "sample / score: a file with one text per line.")
flags.DEFINE_integer("max_new_tokens", 64, "sample: tokens to generate per prompt.")
flags.DEFINE_float("temperature", 0.8, "sample: softmax temperature (0 = greedy).")
flags.DEFINE_integer("top_k", 0, "sample: keep the k most likely tokens (0 = all).")
flags.DEFINE_float("top_p", 1.0, "sample: nucleus probability mass.")
flags.DEFINE_integer("seed", 0, "sample: random seed; eval: the seed of the few-shot draws.")
# --mode=eval (gpt3_jax/evaluation/, docs/evaluation.md).
flags.DEFINE_list("tasks", ["embedded"], "eval: task names (embedded, hellaswag, lambada, arc_easy, arc_challenge, "
                  "piqa, winogrande, copa, storycloze, or NAME for NAME.jsonl in --task_dir).")
flags.DEFINE_list("num_fewshot", ["0"], "eval: the K values, e.g. 0,1,10.")
flags.DEFINE_string("task_dir", None, "eval: directory with the tasks' files (docs/evaluation.md).")
flags.DEFINE_integer("eval_limit", 0, "eval: at most this many examples per task (0: all).")
# Multi-process runs (docs/scaling.md): all three on every process, or none (cluster auto-detection).
flags.DEFINE_string("coordinator_address", None, "Multi-process: HOST:PORT of process 0's coordinator.")
flags.DEFINE_integer("num_processes", None, "Multi-process: total number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process: this process's id in [0, num_processes).")
flags.DEFINE_list("local_device_ids", None, "Multi-process: ids of the local devices this process uses.")
flags.DEFINE_float("peer_timeout_s", 60.0, "Multi-process: a process that stops responding for this long stops "
                   "the others with a one-line error naming it (gpt3_jax/parallel/peer_watchdog.py).")
# --mode=plan (gpt3_jax/planner.py).
flags.DEFINE_integer("plan_devices", None, "plan: number of chips (default: the mesh product, else 8).")
flags.DEFINE_enum("plan_chip", "h100", ["v4", "v5e", "v5p", "v6e", "a100", "h100", "h200"], "plan: chip kind.")
flags.DEFINE_string("plan_mesh", None, "plan: mesh shape 'data,fsdp,tensor' (one -1 allowed); default: "
                    "MeshConfig.shape.")
flags.DEFINE_integer("plan_batch", None, "plan: global batch in sequences (default: TrainConfig.global_batch_size).")
flags.DEFINE_integer("plan_seq_len", None, "plan: sequence length (default: TrainConfig.seq_len or n_ctx).")
flags.DEFINE_integer("plan_microbatches", None, "plan: gradient-accumulation steps (default: TrainConfig's).")
flags.DEFINE_float("plan_mfu", 0.4, "plan: assumed model FLOPs utilization for the step-time estimate.")
flags.DEFINE_float("plan_chip_memory_gb", None, "plan: memory per chip in GB (default: the chip's, see planner).")
flags.DEFINE_bool("plan_compile", False, "plan: also compile the real train step ahead of time on that many "
                  "fake CPU devices (<= 64) and report XLA's memory analysis.")
flags.DEFINE_string("plan_topology", None, "plan: compile the real train step for this TPU slice, e.g. v5e:2x2 or "
                    "v5p:4x4x4, on abstract chips (needs libtpu: the tpu extra); sets the chip and device count.")
FLAGS = flags.FLAGS


def split_gin_flags(argv: Sequence[str]) -> tuple[List[str], List[str]]:
  """Turns `--gin.NAME=VALUE` arguments into gin bindings; returns (remaining argv, bindings)."""
  rest, bindings = [], []
  for arg in argv:
    if arg.startswith("--gin.") and "=" in arg:
      name, value = arg[len("--gin."):].split("=", 1)
      bindings.append(f"{name} = {value}")
    else:
      rest.append(arg)
  return rest, bindings


def parse_flags(argv: Sequence[str]) -> List[str]:
  """absl's parse, with the `--gin.NAME=VALUE` bindings handed to `main` as its arguments after argv[0]."""
  rest, bindings = split_gin_flags(argv)
  try:
    positional = flags.FLAGS(rest)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if len(positional) > 1:
    print(f"error: unexpected argument {positional[1]!r}; settings are --gin.NAME=VALUE or --flag=value",
          file=sys.stderr)
    sys.exit(2)
  return positional[:1] + bindings


class _QuietLibraries(std_logging.Filter):
  """Keeps the libraries' INFO chatter (orbax, TFDS, grain, jax) out of the console; warnings still show.
  Run with --verbosity=1 to see everything."""

  NOISY = ("/orbax/", "/tensorflow_datasets/", "/grain/", "/jax/_src/", "/etils/")

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(n in record.pathname for n in self.NOISY)


def _initialize_distributed() -> None:
  # Before any JAX computation: flags, then the gin configs (parsing starts no backend), --cpu_devices, then this.
  from gpt3_jax.parallel import distributed
  info = distributed.initialize(
      FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
      [int(i) for i in FLAGS.local_device_ids] if FLAGS.local_device_ids else None,
      peer_timeout_s=FLAGS.peer_timeout_s)
  if info.mode != "single":
    logging.info("distributed (%s): process %d of %d", info.mode, info.process_id, info.num_processes)


def _request_cpu_devices(bundle) -> None:
  """--cpu_devices for the training modes, before JAX's CPU backend starts (other modes keep one device)."""
  from gpt3_jax.parallel import cpu_devices
  if FLAGS.cpu_devices == "1":
    return  # XLA's own default, or what XLA_FLAGS asks for
  if FLAGS.mode not in ("train", "finetune"):
    raise UserError(f"--cpu_devices applies to --mode=train and --mode=finetune, not --mode={FLAGS.mode}; drop it")
  micro = bundle.train.global_batch_size // bundle.train.num_microbatches
  count = cpu_devices.request(FLAGS.cpu_devices, batch=micro, mesh_shape=bundle.mesh.shape)
  if count > 1:
    logging.info("--cpu_devices: XLA:CPU runs as %d devices", count)


def run(argv: Sequence[str]) -> None:
  """Dispatches to the mode's module; argv[1:] are the `--gin.NAME=VALUE` bindings."""
  if FLAGS.verbosity < 1:
    logging.get_absl_handler().addFilter(_QuietLibraries())
  from gpt3_jax import configs  # imports jax: keep flag errors fast

  # Parsing starts no JAX backend, so the CPU device count can still follow the configured batch.
  bundle = configs.parse_and_build(FLAGS.gin_file, list(FLAGS.gin_bindings) + list(argv[1:]))
  _request_cpu_devices(bundle)
  _initialize_distributed()
  if FLAGS.compilation_cache and FLAGS.mode != "plan":
    from gpt3_jax.parallel import compile_cache
    compile_cache.enable(FLAGS.compilation_cache_dir)
  if FLAGS.mode == "plan":
    from gpt3_jax.modes import plan
    return plan.run(bundle, FLAGS)
  if not FLAGS.workdir:
    raise UserError(f"--mode={FLAGS.mode} needs --workdir=DIR")
  if FLAGS.mode == "train":
    from gpt3_jax.modes import train
    return train.run(bundle, FLAGS.workdir)
  if FLAGS.mode == "finetune":
    from gpt3_jax.modes import finetune
    return finetune.run(bundle, FLAGS.workdir)
  if FLAGS.mode == "sweep":
    from gpt3_jax.modes import sweep
    return sweep.run(bundle, FLAGS.workdir, FLAGS.gin_file, list(FLAGS.gin_bindings) + list(argv[1:]))
  if FLAGS.mode == "eval":
    from gpt3_jax.modes import eval as eval_mode
    try:
      ks = [int(k) for k in FLAGS.num_fewshot]
    except ValueError:
      raise UserError(f"--num_fewshot={','.join(FLAGS.num_fewshot)} must be integers, e.g. 0,1,10") from None
    eval_mode.run(FLAGS.workdir, list(FLAGS.tasks), ks, task_dir=FLAGS.task_dir, seed=FLAGS.seed,
                  limit=FLAGS.eval_limit, mesh_cfg=bundle.mesh)
    return None
  from gpt3_jax.modes import texts as texts_lib
  texts = texts_lib.read_texts(FLAGS.mode, FLAGS.prompt, FLAGS.prompt_file)
  if FLAGS.mode == "sample":
    from gpt3_jax.modes import sample
    return sample.run(FLAGS.workdir, texts, max_new_tokens=FLAGS.max_new_tokens, temperature=FLAGS.temperature,
                      top_k=FLAGS.top_k, top_p=FLAGS.top_p, seed=FLAGS.seed)
  from gpt3_jax.modes import score
  return score.run(FLAGS.workdir, texts)


@one_line_errors
def main(argv: Sequence[str]) -> None:
  if FLAGS.retain_host_memory:
    host_memory.retain_freed_memory()  # before JAX starts its thread pools
  run(argv)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
