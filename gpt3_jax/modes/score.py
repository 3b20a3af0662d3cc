"""--mode=score: one JSON line per text: token ids, per-token log-probs and their total."""

from __future__ import annotations

import json
from typing import List


def run(workdir: str, texts: List[str]) -> None:
  from gpt3_jax.inference import session
  for row in session.load(workdir).score(texts):
    print(json.dumps(row))
