r"""Entry point: `python -m gpt3_jax.main --gin_file=... [--gin.NAME=VALUE ...] --workdir=DIR [--mode=...]`.

Modes:
  train   (default) train or resume in --workdir; prints the final validation loss next to the unigram baseline
          and a sampled continuation.
  plan    parameter counts and model FLOPs per token of the configured model, without allocating it (--json).
  sample  continue --prompt (or each line of --prompt_file) with the checkpoint in --workdir.
  score   one JSON line per text (--prompt / --prompt_file): token ids, per-token log-probs and their total.

gin files configure the five config dataclasses (ModelConfig, DataConfig, OptimizerConfig, MeshConfig,
TrainConfig); later files and bindings override earlier ones. The operative config is written to the workdir.
"""

from __future__ import annotations

import json
import logging as std_logging
import os
import sys
from typing import List, Sequence

from absl import app, flags, logging

flags.DEFINE_multi_string("gin_file", [], "gin config files, applied in order.")
flags.DEFINE_multi_string("gin_bindings", [], "gin bindings, e.g. 'TrainConfig.train_steps = 10'.")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the operative config.")
flags.DEFINE_enum("mode", "train", ["train", "plan", "sample", "score"], "What to do.")
flags.DEFINE_bool("json", False, "plan / score: print machine-readable JSON.")
flags.DEFINE_string("prompt", None, "sample / score: one text.")
flags.DEFINE_string("prompt_file", None, "sample / score: a file with one text per line.")
flags.DEFINE_integer("max_new_tokens", 64, "sample: tokens to generate per prompt.")
flags.DEFINE_float("temperature", 0.8, "sample: softmax temperature (0 = greedy).")
flags.DEFINE_integer("top_k", 0, "sample: keep the k most likely tokens (0 = all).")
flags.DEFINE_float("top_p", 1.0, "sample: nucleus probability mass.")
flags.DEFINE_integer("seed", 0, "sample: random seed.")
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


def run(argv: Sequence[str]) -> None:
  del argv
  if FLAGS.verbosity < 1:
    logging.get_absl_handler().addFilter(_QuietLibraries())
  from gpt3_jax import configs  # imports jax: keep flag errors fast

  bundle = configs.parse_and_build(FLAGS.gin_file, list(FLAGS.gin_bindings) + _EXTRA_BINDINGS)
  if FLAGS.mode == "plan":
    from gpt3_jax import planner
    report = planner.plan_report(bundle.model)
    print(json.dumps(report) if FLAGS.json else planner.format_report(report))
    return
  if not FLAGS.workdir:
    raise UserError(f"--mode={FLAGS.mode} needs --workdir=DIR")
  if FLAGS.mode == "train":
    from gpt3_jax import quickstart_report
    from gpt3_jax.training import trainer
    configs.write_operative_config(FLAGS.workdir)
    summary = trainer.train(bundle.model, bundle.data, bundle.optimizer, bundle.mesh, bundle.train, FLAGS.workdir)
    quickstart_report.print_summary(summary, bundle.train)
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
