"""The warmup-stable-decay schedule: its values at chosen token counts, and a cool-down branched from a stable
checkpoint of another run that equals a straight run with the same schedule bitwise."""

import dataclasses
import json

import jax
import numpy as np
import pytest

import tiny_configs as tc
from gpt3_jax.training.optimizer import OptimizerConfig, learning_rate_at_tokens


def test_wsd_values_at_chosen_token_counts():
  cfg = OptimizerConfig(schedule="wsd", peak_learning_rate=1e-3, warmup_tokens=100, cooldown_start_tokens=1000,
                        cooldown_tokens=400, final_lr_fraction=0.0)
  lr = lambda tokens, c=cfg: float(learning_rate_at_tokens(c, tokens))
  assert lr(50) == pytest.approx(5e-4) and lr(100) == pytest.approx(1e-3) and lr(999) == pytest.approx(1e-3)
  assert lr(1100) == pytest.approx(7.5e-4) and lr(1300) == pytest.approx(2.5e-4) and lr(1400) == 0.0
  assert lr(5000) == 0.0
  sqrt = dataclasses.replace(cfg, cooldown_shape="1-sqrt", final_lr_fraction=0.1)
  assert lr(1100, sqrt) == pytest.approx(1e-3 - 0.9e-3 * 0.5) and lr(1400, sqrt) == pytest.approx(1e-4)
  with pytest.raises(ValueError, match="schedule='wsd' needs cooldown_tokens > 0"):
    OptimizerConfig(schedule="wsd", warmup_tokens=100)
  with pytest.raises(ValueError, match="schedule='linear' must be one of"):
    OptimizerConfig(schedule="linear")


def _losses(workdir):
  return {r["step"]: r["loss"] for r in map(json.loads, open(f"{workdir}/metrics.jsonl")) if r["split"] == "train"}


def test_a_cooldown_branched_from_a_stable_checkpoint_equals_the_straight_run(tiny_text_dir, tiny_data_dir, tmp_path):
  """A stable run (its cool-down far away) checkpointed at step 4; a branch from that checkpoint cooling down from
  step 4 over 4 steps; a straight run from scratch with the branch's schedule: the branch's parameters and its
  losses from step 5 on equal the straight run's bitwise. A branch with a fresh optimizer or a rewound data
  position would not."""
  from gpt3_jax.training import trainer
  tokens_per_step = tc.train().global_batch_size * 32
  wsd = lambda start: dataclasses.replace(tc.OPTIMIZER, schedule="wsd", peak_learning_rate=1e-2,
                                          cooldown_start_tokens=start, cooldown_tokens=4 * tokens_per_step,
                                          final_lr_fraction=0.0)
  data = tc.data(tiny_text_dir, tiny_data_dir)
  common = dict(log_every=1, eval_every=8, checkpoint_every=4)
  trainer.train(tc.MODEL, data, wsd(1e12), tc.MESH, tc.train(train_steps=8, **common), str(tmp_path / "stable"))
  branch = trainer.train(tc.MODEL, data, wsd(4 * tokens_per_step), tc.MESH,
                         tc.train(train_steps=8, branch_from=str(tmp_path / "stable"), branch_step=4, **common),
                         str(tmp_path / "branch"))
  straight = trainer.train(tc.MODEL, data, wsd(4 * tokens_per_step), tc.MESH, tc.train(train_steps=8, **common),
                           str(tmp_path / "straight"))
  assert branch.initialized_from == f"{tmp_path / 'stable'}@4"
  for a, b in zip(jax.tree.leaves(branch.state.params), jax.tree.leaves(straight.state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  branch_losses, straight_losses = _losses(tmp_path / "branch"), _losses(tmp_path / "straight")
  assert sorted(branch_losses) == [5, 6, 7, 8]
  assert all(branch_losses[s] == straight_losses[s] for s in branch_losses)
  assert _losses(tmp_path / "stable")[8] != straight_losses[8]  # the cool-down changed the run
  with pytest.raises(ValueError, match=r"branch_step=3 is not a checkpoint of .* it has steps \[4, 8\]"):
    trainer.train(tc.MODEL, data, wsd(1e12), tc.MESH, tc.train(branch_from=str(tmp_path / "stable"), branch_step=3),
                  str(tmp_path / "bad"))
