"""JAX's persistent compilation cache: the second start of the same experiment (same shapes, flags and jax
version) loads its compiled steps from disk instead of compiling them again.

On by default for the command line (`--compilation_cache`, `--compilation_cache_dir`); the notebook and library
users call `enable()`. The cache is keyed on the program, the compile options and the jax / XLA version, so a
changed model or flag compiles afresh and never loads a stale executable.
"""

from __future__ import annotations

import os
from typing import Optional

ENV_DIR = "GPT3_JAX_COMPILATION_CACHE_DIR"
# Programs that compile faster than this are not written (the tiny jits of set-up would only fill the cache);
# JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS in the environment overrides it.
MIN_COMPILE_SECONDS = 0.5


def default_dir() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.environ.get(ENV_DIR) or os.path.join(base, "gpt3_jax", "jax_compilation_cache")


def enable(path: Optional[str] = None) -> str:
  """Turns the cache on in `path` (default: $GPT3_JAX_COMPILATION_CACHE_DIR or ~/.cache/gpt3_jax/...); returns
  the directory. Call before the first compilation."""
  import jax
  path = os.path.abspath(path or default_dir())
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path
