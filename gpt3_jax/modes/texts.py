"""The texts that --mode=sample and --mode=score read: --prompt, or one per line of --prompt_file."""

from __future__ import annotations

import os
from typing import List, Optional

from gpt3_jax.errors import UserError


def read_texts(mode: str, prompt: Optional[str], prompt_file: Optional[str]) -> List[str]:
  r"""Each text with '\n' written as a backslash-n turned into a newline."""
  if prompt_file:
    if not os.path.isfile(prompt_file):
      raise UserError(f"--prompt_file {prompt_file!r} does not exist")
    with open(prompt_file, encoding="utf-8") as f:
      return [line.rstrip("\n").replace("\\n", "\n") for line in f if line.strip()]
  if prompt is not None:
    return [prompt.replace("\\n", "\n")]
  raise UserError(f"--mode={mode} needs --prompt or --prompt_file")
