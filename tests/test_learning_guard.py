"""A learning guard: a fixed tiny config trained for a fixed number of steps on a fixed slice of the embedded
corpus (four stdlib packages of the running Python 3.11) must end inside a loss band recorded from several seeds.
A change that silently hurts learning (a wrong gradient, a lost update, a broken schedule, a data bug) fails CI.

Recorded on 2026-12-01 (Python 3.11, jax 0.10.2, CPU) with `python tests/test_learning_guard.py`: the final
validation loss (64 batches, the whole held-out split) after 300 steps for seeds 0-3 (each seed sets both the
initialization and the data order), in SEED_LOSSES; unigram baseline 4.976. The band is their range widened by
BAND_MARGIN on each side. Checked once that it can fail: every update at a tenth of its size (peak LR 5e-4) ends
at 5.031, outside; at half its size (2.5e-3) it ends at 4.352, inside: the seeds' own spread (0.14) is larger
than that, so the guard catches gross damage to learning, not small ones. README.md reports the band next to the
quickstart numbers.
"""

import dataclasses
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_configs as tc  # noqa: E402

STEPS = 300
# Final validation loss (nats/token) by seed; unigram baseline of the same split 4.976.
SEED_LOSSES = {0: 4.3001, 1: 4.4195, 2: 4.4387, 3: 4.3090}
BAND_MARGIN = 0.05


def guard_run(text_dir: str, data_dir: str, workdir: str, seed: int, peak_learning_rate: float = 5e-3):
  from gpt3_jax.training import trainer
  from gpt3_jax.training.optimizer import OptimizerConfig
  optimizer = OptimizerConfig(peak_learning_rate=peak_learning_rate, warmup_tokens=2048, decay_tokens=STEPS * 8 * 32)
  data = dataclasses.replace(tc.data(text_dir, data_dir), seed=seed)
  result = trainer.train(tc.MODEL, data, optimizer, tc.MESH,
                         tc.train(train_steps=STEPS, seed=seed, log_every=STEPS, eval_every=STEPS, eval_batches=64,
                                  checkpoint_every=STEPS), workdir)
  return result.eval_loss, result.unigram_loss


def make_corpus(root: str) -> str:
  """The fixed slice: four stdlib packages under ROOT/corpus (keys, and so the split and order, start 'corpus/')."""
  import shutil
  import sysconfig
  text = os.path.join(root, "corpus")
  for package in ("json", "email", "logging", "http"):
    shutil.copytree(os.path.join(sysconfig.get_paths()["stdlib"], package), os.path.join(text, package),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  return text


def band():
  losses = list(SEED_LOSSES.values())
  return min(losses) - BAND_MARGIN, max(losses) + BAND_MARGIN


@pytest.mark.slow
def test_tiny_model_learns_into_the_recorded_band(tmp_path):
  text = make_corpus(str(tmp_path))
  loss, unigram = guard_run(text, str(tmp_path / "data"), str(tmp_path / "run"), seed=0)
  low, high = band()
  assert low <= loss <= high, f"validation loss {loss:.4f} after {STEPS} steps is outside the band [{low:.4f}, {high:.4f}]"
  assert loss < unigram  # and it has learned more than token frequencies


if __name__ == "__main__":  # re-record: prints the loss of each seed
  import tempfile
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
  root = tempfile.mkdtemp()
  text = make_corpus(root)
  for seed in range(4):
    print(seed, guard_run(text, os.path.join(root, "data"), os.path.join(root, f"run{seed}"), seed), flush=True)
