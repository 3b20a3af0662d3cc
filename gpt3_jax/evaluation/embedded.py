"""A task that needs no download, from the embedded corpus's validation split (the standard library's source,
held out by file): given the lines of a file before line j, pick the true line j among four lines of the same
file. Chance is 1/4; a model that has learned Python's structure does far better.

Examples are a pure function of (the validation files, EXAMPLES_PER_FILE, seed 0): the same for every model.
The first DEMO_FRACTION of them form the demonstration split.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from gpt3_jax.evaluation.tasks import Example, Task

CHOICES = 4
CONTEXT_LINES = 6
EXAMPLES_PER_FILE = 8
MAX_EXAMPLES = 300
DEMO_FRACTION = 0.2


def _usable(line: str) -> bool:
  return len(line.strip()) >= 8


def examples_from_texts(texts: List[str], *, max_examples: int = MAX_EXAMPLES, seed: int = 0) -> List[Example]:
  rng = np.random.default_rng(seed)
  out: List[Example] = []
  for text in texts:
    lines = text.split("\n")
    candidates = [j for j in range(CONTEXT_LINES // 2, len(lines)) if _usable(lines[j])]
    distinct = sorted({lines[j] for j in candidates})
    if len(distinct) < CHOICES + 1:
      continue
    for j in rng.choice(candidates, size=min(EXAMPLES_PER_FILE, len(candidates)), replace=False):
      others = [line for line in distinct if line != lines[j]]
      choices = [lines[j]] + [others[i] for i in rng.choice(len(others), size=CHOICES - 1, replace=False)]
      order = rng.permutation(CHOICES)
      context = "\n".join(lines[max(0, j - CONTEXT_LINES):j]) + "\n"
      out.append(Example(context=context, choices=[choices[i] for i in order],
                         gold=int(np.argmax(order == 0))))
      if len(out) >= max_examples:
        return out
  return out


def validation_texts(data_dir: Optional[str] = None, paths: Sequence[str] = (),
                     validation_fraction: Optional[float] = None) -> List[str]:
  """The validation documents of a text-files corpus: `paths` (default: the embedded stdlib corpus), prepared
  into the data cache `data_dir` on first use (the split training holds out, so a trained model never saw them)."""
  from gpt3_jax.data import sources
  from gpt3_jax.data.corpus import DataConfig
  cfg = DataConfig() if data_dir is None else DataConfig(data_dir=data_dir)
  prepared = sources.prepare_text_source(sources.SourceConfig(name="text", kind="text_files", paths=tuple(paths)),
                                         cfg.data_dir, validation_fraction or cfg.validation_fraction)
  texts = []
  for i in range(len(prepared.validation)):
    text = prepared.validation[i]["text"]
    texts.append(text.decode("utf-8") if isinstance(text, bytes) else str(text))
  return texts


def embedded_task(texts: Optional[List[str]] = None) -> Task:
  examples = examples_from_texts(texts if texts is not None else validation_texts())
  if len(examples) < 10:
    raise ValueError(f"the embedded task found only {len(examples)} examples in the validation split")
  cut = max(1, int(len(examples) * DEMO_FRACTION))
  return Task("embedded_next_line", "multiple_choice", {"train": examples[:cut], "validation": examples[cut:]},
              separator="\n")
