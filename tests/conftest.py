"""Shared test set-up: CPU only, quiet logs, and session-wide fixtures (a tiny prepared corpus)."""

import os
import sys

# Before jax is imported anywhere: CPU, and cheap compilation (tiny models: compile time dominates).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# `python -m gpt3_jax.main` keeps a persistent compilation cache: the tests' runs keep theirs in a temporary
# directory of this process (and its subprocesses), never in ~/.cache.
if "GPT3_JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit
  import shutil
  import tempfile
  os.environ["GPT3_JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="gpt3_jax_compile_cache_")
  atexit.register(shutil.rmtree, os.environ["GPT3_JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

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


@pytest.fixture(scope="session")
def imported_gpt2(tmp_path_factory):
  """The workdir of an imported random GPT-2 (n_ctx 64, 2 layers, d_model 32) with its byte-level BPE tokenizer
  trained on stdlib text: the base of the fine-tuning tests."""
  pytest.importorskip("transformers")
  import hf_fixtures
  from gpt3_jax import convert
  root = tmp_path_factory.mktemp("gpt2_import")
  hf_dir = hf_fixtures.make_hf_gpt2_dir(str(root / "hf"), hf_fixtures.stdlib_texts(), n_positions=64)
  convert.import_hf(hf_dir, str(root / "base"))
  return str(root / "base")
