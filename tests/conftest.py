"""Shared test set-up: CPU only, quiet logs, and session-wide fixtures (a tiny prepared corpus)."""

import os
import sys

# Before jax is imported anywhere: CPU, and cheap compilation (tiny models: compile time dominates).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))


@pytest.fixture(scope="session")
def tiny_text_dir(tmp_path_factory):
  """A small real corpus: the json, email and logging packages of the running interpreter's stdlib."""
  import sysconfig
  import shutil
  root = tmp_path_factory.mktemp("corpus")
  stdlib = sysconfig.get_paths()["stdlib"]
  for package in ("json", "email", "logging", "http"):
    shutil.copytree(os.path.join(stdlib, package), root / package,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  return str(root)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data_cache"))
