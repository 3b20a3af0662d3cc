r"""A nanoGPT-style PyTorch training run on nanoGPT token files: the PyTorch side of experiments/e2e_benchmark.py.

  python experiments/torch_train_loop.py --data_dir=DIR --out_dir=DIR [--shape=tiny --steps=150 --eval_every=50]

What nanoGPT's train.py does on CPU, with Hugging Face's GPT2LMHeadModel (peer_models.pytorch_model: no
dropout, sdpa attention): memory-mapped uint16 train.bin / val.bin, random windows each step, AdamW(0.9, 0.95,
weight decay 0.1) with linear warm-up and cosine decay to a tenth, clip_grad_norm_(1.0), the loss fetched every
--log_every steps, the validation loss over --eval_batches fixed batches every --eval_every steps and at the end,
and a checkpoint (model and optimizer) written at the end. Prints one JSON line: the median step time and the last
validation loss.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_models  # noqa: E402  same directory: the shapes and the model

flags.DEFINE_string("data_dir", None, "Directory with train.bin and val.bin (uint16 ids).", required=True)
flags.DEFINE_string("out_dir", None, "Where the checkpoint goes.", required=True)
flags.DEFINE_enum("shape", "tiny", sorted(peer_models.SHAPES), "Model and batch shape (peer_benchmark's).")
flags.DEFINE_integer("steps", 150, "Training steps.")
flags.DEFINE_integer("warmup_steps", 10, "Linear warm-up steps.")
flags.DEFINE_float("learning_rate", 2e-3, "Peak learning rate.")
flags.DEFINE_integer("log_every", 10, "Fetch (and print) the training loss every this many steps.")
flags.DEFINE_integer("eval_every", 50, "Validation every this many steps (and at the end).")
flags.DEFINE_integer("eval_batches", 4, "Validation batches.")
FLAGS = flags.FLAGS


def _learning_rate(step: int) -> float:
  if step < FLAGS.warmup_steps:
    return FLAGS.learning_rate * (step + 1) / FLAGS.warmup_steps
  progress = (step - FLAGS.warmup_steps) / max(1, FLAGS.steps - FLAGS.warmup_steps)
  return FLAGS.learning_rate * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))


def main(argv):
  del argv
  import torch
  shape = peer_models.SHAPES[FLAGS.shape]
  train = np.memmap(os.path.join(FLAGS.data_dir, "train.bin"), dtype=np.uint16, mode="r")
  val = np.memmap(os.path.join(FLAGS.data_dir, "val.bin"), dtype=np.uint16, mode="r")
  model, optimizer = peer_models.pytorch_model(shape, FLAGS.learning_rate)
  rng = np.random.default_rng(0)

  def window(tokens, start):
    return torch.from_numpy(tokens[start:start + shape.seq].astype(np.int64))

  def validation_loss() -> float:
    model.eval()
    with torch.no_grad():
      losses = [model(input_ids=x, labels=x).loss.item() for x in
                (torch.stack([window(val, (b * shape.batch + i) * shape.seq) for i in range(shape.batch)])
                 for b in range(FLAGS.eval_batches))]
    model.train()
    return sum(losses) / len(losses)

  step_times, val_loss = [], float("nan")
  for step in range(FLAGS.steps):
    start = time.perf_counter()
    for group in optimizer.param_groups:
      group["lr"] = _learning_rate(step)
    x = torch.stack([window(train, int(i)) for i in rng.integers(0, len(train) - shape.seq, shape.batch)])
    loss = model(input_ids=x, labels=x).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if (step + 1) % FLAGS.log_every == 0:
      print(f"step {step + 1}: loss {loss.item():.3f}", flush=True)
    step_times.append(time.perf_counter() - start)
    if (step + 1) % FLAGS.eval_every == 0 or step + 1 == FLAGS.steps:
      val_loss = validation_loss()
      print(f"step {step + 1}: validation loss {val_loss:.3f}", flush=True)
  os.makedirs(FLAGS.out_dir, exist_ok=True)
  torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": FLAGS.steps},
             os.path.join(FLAGS.out_dir, "ckpt.pt"))
  print(json.dumps({"median_step_s": statistics.median(step_times), "val_loss": val_loss, "steps": FLAGS.steps,
                    "torch": torch.__version__}))


if __name__ == "__main__":
  app.run(main)
