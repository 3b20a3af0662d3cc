"""experiments/gpu_check.py, the script a GPU session runs first, runs end to end here on tiny shapes (--smoke),
so it has not rotted when a GPU is lent; without a GPU and without --smoke it refuses in one line."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "experiments/gpu_check.py", *args], capture_output=True, text=True,
                        cwd=REPO, env=env, timeout=600)


def test_gpu_check_smoke_prints_its_tables_and_a_verdict():
  out = _run("--smoke", "--models=small")
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.splitlines()
  assert any(line.startswith("| xla | dense |") for line in lines), out.stdout
  rows = [line.split(" | ") for line in lines if line.startswith("| small |")]
  assert [r[1] for r in rows] == ["float32", "bfloat16"], out.stdout
  first, last = float(rows[1][8]), float(rows[1][9])
  assert last < first  # the repeated batch is being learned, in bf16 too
  assert lines[-1] == "verdict: OK"


def test_gpu_check_without_a_gpu_refuses_in_one_line():
  out = _run("--models=small")
  errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
  assert out.returncode != 0 and len(errors) == 1 and "--smoke" in errors[0], out.stderr[-2000:]
