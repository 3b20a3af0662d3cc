"""Task names -> tasks: 'embedded' (no download), the standard tasks' files under --task_dir, or NAME for a
generic NAME.jsonl there (or a path to one)."""

from __future__ import annotations

from typing import List, Optional, Sequence

from gpt3_jax.evaluation import embedded, readers
from gpt3_jax.evaluation.tasks import Task

EMBEDDED = "embedded"


def load_tasks(names: Sequence[str], task_dir: Optional[str]) -> List[Task]:
  """Reads every task before any model work; a missing file or unknown name is a one-line error."""
  out = []
  for name in names:
    if name == EMBEDDED:
      out.append(embedded.embedded_task())
      continue
    if not task_dir and not name.endswith(".jsonl"):
      raise ValueError(f"task {name!r} needs --task_dir=DIR with its files (see docs/evaluation.md), or use "
                       f"--tasks={EMBEDDED}")
    out.append(readers.standard_task(name, task_dir or "."))
  return out
