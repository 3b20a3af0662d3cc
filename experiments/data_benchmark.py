r"""Data-pipeline throughput next to the training step's token consumption, on this machine.

  python experiments/data_benchmark.py --models=tiny,small --seq_len=256 --batch_size=8

Measures, in tokens/s:
  text -> tokens: SentencePiece tokenization of the prepared text (the default corpus, the stdlib's .py
    files) through the grain pipeline (`token_store.tokenize_split`, one thread per core), written to a
    token file. A one-time cost per corpus: training reads token files.
  token files -> batches: the training iterator (`Mixture.iterator`, grain, 2 threads) over the token file,
    for one source and for a 3-source mixture, at the model's [batch, seq_len + 1] shape.
  train step: `experiments/benchmark.py` (synthetic batches) for each model, in a subprocess.
The last column is pipeline tokens/s over step tokens/s: it must stay at or above 10.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

flags.DEFINE_list("models", ["tiny", "small"], "Model gin files under gin_configs/models/.")
flags.DEFINE_integer("seq_len", 256, "Sequence length for the iterator and the step.")
flags.DEFINE_integer("batch_size", 8, "Global batch size (sequences).")
flags.DEFINE_integer("batches", 2000, "Iterator batches timed.")
flags.DEFINE_string("data_dir", os.path.join(tempfile.gettempdir(), "gpt3_jax_data_benchmark"), "Cache dir.")
flags.DEFINE_list("paths", [], "Text inputs (default: the stdlib corpus).")
FLAGS = flags.FLAGS

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def text_to_tokens(data_dir: str, paths) -> tuple[float, str, int]:
  """(tokens/s, token file, vocab size) of tokenizing the prepared text into a fresh token file."""
  from gpt3_jax.data import corpus, sources, token_store  # pylint: disable=g-import-not-at-top
  cfg = corpus.DataConfig(data_dir=data_dir, paths=tuple(paths))
  src_cfg = corpus.resolved_sources(cfg)[0][0]
  prepared = sources.prepare_text_source(src_cfg, data_dir, cfg.validation_fraction)
  tok, _ = corpus.train_corpus_tokenizer(cfg)
  out = os.path.join(data_dir, "benchmark", "train.bin")
  for stale in (out, token_store.sidecar_path(out)):
    if os.path.exists(stale):
      os.remove(stale)
  start = time.perf_counter()
  tokens = token_store.tokenize_split(prepared.train, tok, out)
  elapsed = time.perf_counter() - start
  return len(tokens) / elapsed, out, tok.vocab_size


def iterator_tokens_s(path: str, *, sources: int, seq_len: int, batch_size: int, batches: int) -> float:
  """Tokens/s of the training iterator over `sources` copies of one token file."""
  from gpt3_jax.data import mixture, token_store  # pylint: disable=g-import-not-at-top
  tokens = token_store.load_tokens(path)
  weights = [0.6, 0.3, 0.1][:sources]
  it = mixture.Mixture([tokens] * sources, weights, seq_len=seq_len, global_batch_size=batch_size,
                       seed=0).iterator()
  next(it)  # Start the threads.
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * batch_size * seq_len / (time.perf_counter() - start)


def step_tokens_s(model: str, seq_len: int, batch_size: int) -> float:
  """Tokens/s of one training step of `model` (experiments/benchmark.py, synthetic batches)."""
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, "experiments", "benchmark.py"),
       f"--gin_file=gin_configs/models/{model}.gin", f"--seq_len={seq_len}", f"--batch_size={batch_size}",
       "--steps=3", "--json"], cwd=REPO_ROOT, capture_output=True, text=True, check=True,
      env=dict(os.environ, PYTHONPATH=REPO_ROOT))
  return json.loads(proc.stdout.strip().splitlines()[-1])["tokens_s"]


def main(argv):
  del argv
  text_s, path, vocab = text_to_tokens(FLAGS.data_dir, FLAGS.paths)
  kw = dict(seq_len=FLAGS.seq_len, batch_size=FLAGS.batch_size, batches=FLAGS.batches)
  one = iterator_tokens_s(path, sources=1, **kw)
  three = iterator_tokens_s(path, sources=3, **kw)
  print(f"cpus={os.cpu_count()} vocab={vocab} seq_len={FLAGS.seq_len} batch={FLAGS.batch_size}\n")
  print("| model | train step tok/s | text -> tokens tok/s (x step) | token file, 1 source tok/s (x step) "
        "| token files, 3-source mixture tok/s (x step) |")
  print("|---|---|---|---|---|")
  for model in FLAGS.models:
    step = step_tokens_s(model, FLAGS.seq_len, FLAGS.batch_size)
    cells = " | ".join(f"{v:,.0f} ({v / step:,.0f}x)" for v in (text_s, one, three))
    print(f"| {model} | {step:,.0f} | {cells} |")


if __name__ == "__main__":
  sys.path.insert(0, REPO_ROOT)
  app.run(main)
