"""Keep freed host memory mapped, so XLA:CPU's per-step scratch buffer is not page-faulted in every step.

XLA:CPU allocates a step's temporary buffer (1.8-2.1 GB for GPT-3 Small at batch 4 x 256, unscanned or scanned)
with malloc when the step starts and frees it when it ends. glibc serves an allocation that large with mmap and
returns it with munmap, so every step the kernel maps and zeroes the whole buffer again, one 4 KiB page fault at
a time: 460,000-525,000 minor faults and about 0.3 s of a 5 s step on the 2-core development machine
(experiments/benchmark.py prints the faults per step; --noretain_host_memory shows the difference).

`retain_freed_memory()` sets three glibc malloc options at run time (mallopt): one arena, no mmap'd chunks and no
trimming. Freed buffers then stay in the heap and the next step reuses them: zero page faults after warm-up. The
cost is that the process keeps its peak heap size until it exits, as jemalloc and tcmalloc also do. It must run
before JAX creates its thread pools (before the first computation), and it does nothing off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource

# mallopt parameters from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def retain_freed_memory() -> bool:
  """Makes glibc malloc keep freed memory for reuse; returns False where that is not possible (not glibc)."""
  name = ctypes.util.find_library("c")
  if name is None:
    return False
  try:
    libc = ctypes.CDLL(name)
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))  # -1: never trim
  return all(mallopt(param, value) == 1 for param, value in settings)


def minor_page_faults() -> int:
  """Minor page faults of this process so far (to measure what one step costs in fresh pages)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
