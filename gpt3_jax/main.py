r"""Entry point: `python -m gpt3_jax.main --gin_file=... [--gin.NAME=VALUE ...] --workdir=DIR [--mode=...]`.

Modes:
  train   (default) train or resume in --workdir; prints the final validation loss next to the unigram baseline
          and a sampled continuation.
  plan    what the configured model costs on a mesh and chip, without allocating it: parameter counts, per-device
          memory of params / gradients / optimizer state / activations, FLOPs, step time and tokens per day at
          an assumed MFU, and whether it fits (else a mesh that does); --plan_* flags, --json (gpt3_jax/planner.py).
  sample  continue --prompt (or each line of --prompt_file) with the checkpoint in --workdir.
  score   one JSON line per text (--prompt / --prompt_file): token ids, per-token log-probs and their total.

gin files configure the five config dataclasses (ModelConfig, DataConfig, OptimizerConfig, MeshConfig,
TrainConfig); later files and bindings override earlier ones. The operative config is written to the workdir.

Multi-process runs: --coordinator_address, --num_processes and --process_id on every process, or none of them
inside a SLURM / Open MPI / multi-host TPU job (detected automatically); see docs/scaling.md.
"""

from __future__ import annotations

import json
import logging as std_logging
import os
import sys
from typing import List, Sequence

from absl import app, flags, logging

from gpt3_jax.parallel import host_memory

flags.DEFINE_multi_string("gin_file", [], "gin config files, applied in order.")
flags.DEFINE_multi_string("gin_bindings", [], "gin bindings, e.g. 'TrainConfig.train_steps = 10'.")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the operative config.")
flags.DEFINE_enum("mode", "train", ["train", "plan", "sample", "score"], "What to do.")
flags.DEFINE_bool("json", False, "plan / score: print machine-readable JSON.")
flags.DEFINE_bool("retain_host_memory", True, "Keep freed host memory for reuse instead of returning it to the OS "
                  "(glibc): XLA:CPU then stops page-faulting its scratch memory in every step. See "
                  "gpt3_jax/parallel/host_memory.py.")
flags.DEFINE_string("prompt", None, "sample / score: one text.")
flags.DEFINE_string("prompt_file", None, "sample / score: a file with one text per line.")
flags.DEFINE_integer("max_new_tokens", 64, "sample: tokens to generate per prompt.")
flags.DEFINE_float("temperature", 0.8, "sample: softmax temperature (0 = greedy).")
flags.DEFINE_integer("top_k", 0, "sample: keep the k most likely tokens (0 = all).")
flags.DEFINE_float("top_p", 1.0, "sample: nucleus probability mass.")
flags.DEFINE_integer("seed", 0, "sample: random seed.")
# Multi-process runs (docs/scaling.md): all three on every process, or none (cluster auto-detection).
flags.DEFINE_string("coordinator_address", None, "Multi-process: HOST:PORT of process 0's coordinator.")
flags.DEFINE_integer("num_processes", None, "Multi-process: total number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process: this process's id in [0, num_processes).")
flags.DEFINE_list("local_device_ids", None, "Multi-process: ids of the local devices this process uses.")
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
FLAGS = flags.FLAGS


class UserError(Exception):
  """A problem with the command line or configuration: printed as one line, exit status 2."""


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


_EXTRA_BINDINGS: List[str] = []


def parse_flags(argv: Sequence[str]):
  rest, bindings = split_gin_flags(argv)
  _EXTRA_BINDINGS.extend(bindings)
  try:
    return flags.FLAGS(rest)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def _prompts() -> List[str]:
  if FLAGS.prompt_file:
    if not os.path.isfile(FLAGS.prompt_file):
      raise UserError(f"--prompt_file {FLAGS.prompt_file!r} does not exist")
    with open(FLAGS.prompt_file, encoding="utf-8") as f:
      return [line.rstrip("\n").replace("\\n", "\n") for line in f if line.strip()]
  if FLAGS.prompt is not None:
    return [FLAGS.prompt.replace("\\n", "\n")]
  raise UserError(f"--mode={FLAGS.mode} needs --prompt or --prompt_file")


class _QuietLibraries(std_logging.Filter):
  """Keeps the libraries' INFO chatter (orbax, TFDS, grain, jax) out of the console; warnings still show.
  Run with --verbosity=1 to see everything."""

  NOISY = ("/orbax/", "/tensorflow_datasets/", "/grain/", "/jax/_src/", "/etils/")

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(n in record.pathname for n in self.NOISY)


def _plan_options(bundle) -> dict:
  """The --plan_* flags, with defaults from the gin-configured mesh and training settings."""
  mesh = bundle.mesh.shape
  if FLAGS.plan_mesh:
    try:
      mesh = tuple(int(x) for x in FLAGS.plan_mesh.split(","))
    except ValueError:
      raise UserError(f"--plan_mesh={FLAGS.plan_mesh!r} must be three integers 'data,fsdp,tensor'") from None
  return dict(mesh_shape=mesh, num_devices=FLAGS.plan_devices, chip=FLAGS.plan_chip,
              global_batch=FLAGS.plan_batch or bundle.train.global_batch_size,
              seq_len=FLAGS.plan_seq_len or bundle.train.seq_len,
              num_microbatches=FLAGS.plan_microbatches or bundle.train.num_microbatches,
              mfu=FLAGS.plan_mfu, chip_memory_gb=FLAGS.plan_chip_memory_gb, compile=FLAGS.plan_compile,
              optimizer=bundle.optimizer)


def run(argv: Sequence[str]) -> None:
  del argv
  if FLAGS.verbosity < 1:
    logging.get_absl_handler().addFilter(_QuietLibraries())
  from gpt3_jax.parallel import distributed  # before any other JAX call: flags, then init, then configs
  info = distributed.initialize(
      FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
      [int(i) for i in FLAGS.local_device_ids] if FLAGS.local_device_ids else None)
  if info.mode != "single":
    logging.info("distributed (%s): process %d of %d", info.mode, info.process_id, info.num_processes)
  from gpt3_jax import configs  # imports jax: keep flag errors fast

  bundle = configs.parse_and_build(FLAGS.gin_file, list(FLAGS.gin_bindings) + _EXTRA_BINDINGS)
  if FLAGS.mode == "plan":
    from gpt3_jax import planner
    report = planner.plan_report(bundle.model, **_plan_options(bundle))
    print(json.dumps(report) if FLAGS.json else planner.format_report(report))
    return
  if not FLAGS.workdir:
    raise UserError(f"--mode={FLAGS.mode} needs --workdir=DIR")
  if FLAGS.mode == "train":
    from gpt3_jax import run_summary
    from gpt3_jax.training import trainer
    configs.write_operative_config(FLAGS.workdir)
    bundle.check_vocab()
    summary = trainer.train(bundle.model, bundle.data, bundle.optimizer, bundle.mesh, bundle.train, FLAGS.workdir)
    run_summary.print_summary(summary, bundle.train)
    return
  from gpt3_jax.inference import session
  model = session.load(FLAGS.workdir)
  texts = _prompts()
  if FLAGS.mode == "sample":
    for text, completion in zip(texts, model.sample(texts, max_new_tokens=FLAGS.max_new_tokens,
                                                    temperature=FLAGS.temperature, top_k=FLAGS.top_k,
                                                    top_p=FLAGS.top_p, seed=FLAGS.seed)):
      print(f"=== prompt: {text!r}\n{text}{completion}")
  else:
    for row in model.score(texts):
      print(json.dumps(row))


def main(argv: Sequence[str]) -> None:
  if FLAGS.retain_host_memory:
    host_memory.retain_freed_memory()  # before JAX starts its thread pools
  try:
    run(argv)
  except (UserError, ValueError, FileNotFoundError) as e:
    if os.environ.get("GPT3_JAX_TRACEBACK"):
      raise
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    logging.flush()
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
