"""The package installs with its dependencies declared: pyproject's ranges admit the exact pins CI installs, the
extras exist, and a wheel built from the repository carries the gpt3_jax package and its requirements."""

import os
import re
import subprocess
import sys
import tomllib
import zipfile

import pytest
from packaging.requirements import Requirement

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pins(name):
  pins = {}
  with open(os.path.join(REPO, name)) as f:
    for line in f:
      line = line.split("#")[0].strip()
      if line and not line.startswith("-r"):
        req = Requirement(line)
        pins[req.name.lower()] = str(next(iter(req.specifier)).version)
  return pins


def _project():
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)["project"]


def test_declared_ranges_admit_the_pinned_versions():
  declared = {Requirement(r).name.lower(): Requirement(r) for r in _project()["dependencies"]}
  pins = _pins("requirements.txt")
  missing = sorted(set(pins) - set(declared) - {"jaxlib"})  # jaxlib comes with jax
  assert not missing, f"requirements.txt pins {missing} but pyproject.toml does not declare them"
  for name, req in declared.items():
    assert name in pins, f"pyproject.toml declares {name} but requirements.txt does not pin it"
    assert req.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside pyproject's {req.specifier}"
  extras = {Requirement(r).name.lower(): (extra, Requirement(r)) for extra, reqs in
            _project()["optional-dependencies"].items() for r in reqs}
  for name, version in _pins("requirements-test.txt").items():
    if name in extras:
      extra, req = extras[name]
      base = re.sub(r"\+.*", "", version)
      assert req.specifier.contains(base), f"the {extra} extra's {name} excludes the pinned {version}"


def test_extras_for_eval_sweeps_tpu_and_tests():
  assert {"eval", "sweep", "tpu", "test"} <= set(_project()["optional-dependencies"])


@pytest.mark.slow
def test_a_wheel_from_the_repository_carries_the_package_and_its_requirements(tmp_path):
  out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path), REPO], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  (wheel,) = [f for f in os.listdir(tmp_path) if f.endswith(".whl")]
  with zipfile.ZipFile(tmp_path / wheel) as z:
    names = z.namelist()
    metadata = z.read(next(n for n in names if n.endswith("METADATA"))).decode()
  assert "gpt3_jax/main.py" in names and "gpt3_jax/training/assembly.py" in names
  requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
  assert any(r.startswith("jax") for r in requires) and any(r.startswith("flax") for r in requires)
  assert any("extra == \"eval\"" in r for r in requires)
