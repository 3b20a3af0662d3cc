"""The throughput window: an evaluation hook's time is left out of tokens/s, the training step still in flight
when the hook starts is not.

The end-to-end runs cannot check this reliably: with one-step logging on two busy cores, a late host thread moves
a step's compute into the neighbouring window, so a single window's tokens/s swings by 40x without any bug. Here
the step in flight is a known slow computation and the evaluation itself is instant, so the excluded time is
either about nothing (right) or about the whole step (the bug: the hook's first read of the parameters waits for
the step, and that wait is excluded as evaluation).
"""

import collections
import time
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import pytest

from gpt3_jax.training import hooks
from gpt3_jax.training.loop_state import Throughput

State = collections.namedtuple("State", "params")  # a pytree, like the TrainState the hooks block on


@jax.jit
def _slow_step(x):
  for _ in range(12):
    x = jnp.tanh(x @ x) * 0.5
  return x


def _waits_for(params):
  jax.block_until_ready(params)  # an evaluation reads the parameters first


class _Evaluator:
  def __init__(self, cfg, params, tokenizer, mesh):
    _waits_for(params)


def _run(state):
  return SimpleNamespace(state=state, window=Throughput(0), primary=False, eval_metrics=None, task_results=None,
                         asm=SimpleNamespace(model=SimpleNamespace(class_labels=()), mesh=None),
                         corpus=SimpleNamespace(streams=(), weights=(), tokenizer=None),
                         cfg=SimpleNamespace(global_batch_size=1, eval_batches=1, task_eval_fewshot=(0,), seed=0,
                                             task_eval_limit=0),
                         logger=SimpleNamespace(write=lambda *args, **kwargs: None))


@pytest.mark.parametrize("hook", ["Evaluate", "TaskEval"])
def test_an_evaluation_hook_excludes_its_own_time_but_not_the_step_in_flight(hook, monkeypatch):
  from gpt3_jax.evaluation import runner
  monkeypatch.setattr(hooks.validation_loss, "evaluate_sources",
                      lambda asm, params, *args, **kwargs: _waits_for(params) or {"loss": 1.0})
  monkeypatch.setattr(runner, "Evaluator", _Evaluator)
  monkeypatch.setattr(runner, "evaluate_all", lambda *args, **kwargs: {})
  x = jnp.full((768, 768), 0.01, jnp.float32)
  jax.block_until_ready(_slow_step(x))  # compiled
  start = time.perf_counter()
  jax.block_until_ready(_slow_step(x))
  step_seconds = time.perf_counter() - start

  run = _run(State(params=_slow_step(x)))  # dispatched, still running
  (hooks.Evaluate() if hook == "Evaluate" else hooks.TaskEval(tasks=()))(run, 1)
  assert run.window.excluded < 0.3 * step_seconds, (run.window.excluded, step_seconds)


def test_tokens_per_s_is_tokens_over_the_window_less_what_it_excluded(monkeypatch):
  clock = iter([10.0, 13.0])
  monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
  window = Throughput(0)
  window.exclude(1.0)
  assert window.tokens_per_s(400) == pytest.approx(200.0)  # 400 tokens over 3 s less 1 s excluded
