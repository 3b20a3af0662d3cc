r"""Evaluation throughput: requests/s and scored tokens/s of `--mode=eval`'s scorer on the embedded next-line task,
for the quickstart model's shape (random weights: throughput does not depend on them), warm (compilation is
timed separately).

  python experiments/eval_benchmark.py [--gin_file=gin_configs/experiments/quickstart.gin] [--batch_size=16]
      [--num_fewshot=0,3] [--limit=0]

It prepares (or reuses) the quickstart's corpus and tokenizer, as `make quickstart` does.
"""

from __future__ import annotations

import time

from absl import app, flags

flags.DEFINE_multi_string("gin_file", ["gin_configs/experiments/quickstart.gin"], "Experiment gin files.")
flags.DEFINE_integer("batch_size", 16, "Requests per forward pass.")
flags.DEFINE_list("num_fewshot", ["0", "3"], "K values.")
flags.DEFINE_integer("limit", 0, "At most this many examples (0: all).")
FLAGS = flags.FLAGS


def main(argv) -> None:
  del argv
  import jax
  import numpy as np
  from gpt3_jax import configs
  from gpt3_jax.data import corpus as corpus_lib
  from gpt3_jax.evaluation import embedded, runner
  from gpt3_jax.model.transformer import GPT
  bundle = configs.parse_and_build(FLAGS.gin_file, [])
  corpus = corpus_lib.prepare_corpus(bundle.data)
  cfg = bundle.model.replace(vocab_size=corpus.vocab_size)
  params = GPT(cfg).init(jax.random.key(0), np.zeros((1, 8), np.int32))["params"]
  task = embedded.embedded_task()
  print(f"{jax.device_count()} {jax.devices()[0].platform} device(s); model d_model {cfg.d_model}, "
        f"{cfg.n_layers} layers, n_ctx {cfg.n_ctx}; batch {FLAGS.batch_size}")
  print(f"{'K':>3s} {'examples':>8s} {'requests':>8s} {'first s':>8s} {'warm s':>7s} {'requests/s':>10s}")
  for k in map(int, FLAGS.num_fewshot):
    evaluator = runner.Evaluator(cfg, params, corpus.tokenizer, batch_size=FLAGS.batch_size)
    times = []
    for _ in range(2):  # the first includes compilation of each bucket width
      start = time.perf_counter()
      result = evaluator.evaluate(task, k, limit=FLAGS.limit)
      times.append(time.perf_counter() - start)
    requests = sum(len(ex.choices) for ex in task.examples[:FLAGS.limit or None])  # one per choice
    print(f"{k:3d} {result['n']:8d} {requests:8d} {times[0]:8.1f} {times[1]:7.1f} {requests / times[1]:10.1f}")


if __name__ == "__main__":
  app.run(main)
