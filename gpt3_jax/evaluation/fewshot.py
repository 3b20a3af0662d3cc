"""The paper's few-shot prompt (Section 2.4): K demonstrations drawn at random from the task's few-shot split,
seeded by (seed, K, example index) so every run draws the same ones, each a solved example, joined by the task's
separator, then the example itself. K is capped by the context: demonstrations are dropped from the front until
the prompt and its longest continuation fit n_ctx tokens."""

from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import numpy as np

from gpt3_jax.evaluation.tasks import Example, Task


def draw(task: Task, index: int, k: int, seed: int) -> List[Example]:
  """K demonstrations for example `index`, never the example itself."""
  pool = task.demonstrations()
  same_split = task.fewshot_split == task.eval_split
  candidates = [i for i in range(len(pool)) if not (same_split and i == index)]
  if k <= 0 or not candidates:
    return []
  rng = np.random.default_rng([seed, k, index])
  picks = rng.choice(len(candidates), size=min(k, len(candidates)), replace=False)
  return [pool[candidates[i]] for i in picks]


def prefix(task: Task, demos: Sequence[Example]) -> str:
  return "".join(task.demo_text(d) + task.separator for d in demos)


def fit(task: Task, demos: List[Example], body: str, longest: str, count: Callable[[str], int],
        n_ctx: int) -> Tuple[str, int]:
  """(the prompt prefix, K used): the most demonstrations (dropping from the front) that keep prefix + body +
  the longest continuation within n_ctx tokens."""
  while demos and count(prefix(task, demos) + body + longest) > n_ctx:
    demos = demos[1:]
  return prefix(task, demos), len(demos)
