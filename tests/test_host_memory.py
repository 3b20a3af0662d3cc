"""retain_freed_memory: a large buffer freed and allocated again is not page-faulted in again.

The effect on a real training step (zero faults per step instead of about 525,000) is printed by
experiments/benchmark.py as page_faults_per_step.
"""

import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, ctypes.util, sys
from gpt3_jax.parallel import host_memory
if sys.argv[1] == "retain":
  assert host_memory.retain_freed_memory()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 64 * 2 ** 20

def touch_once():  # what XLA:CPU does with a step's scratch buffer: allocate, write, free
  block = libc.malloc(size)
  ctypes.memset(block, 1, size)
  libc.free(block)

touch_once()
before = host_memory.minor_page_faults()
touch_once()
print(host_memory.minor_page_faults() - before)
"""


def _faults_per_call(mode: str) -> int:
  out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                       timeout=120)
  return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc options are Linux-only")
def test_retained_memory_removes_per_call_page_faults():
  pages = 64 * 2 ** 20 // 4096
  default, retained = _faults_per_call("default"), _faults_per_call("retain")
  assert default > pages // 2, f"expected glibc to map the 64 MiB buffer afresh, got {default} faults"
  assert retained < pages // 100, f"the retained buffer still faulted {retained} pages"
