"""The exploration notebook (notebooks/gpt3_jax_tour.ipynb) runs headless, end to end, with real outputs."""

import ast
import os
import re

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO_ROOT, "notebooks", "gpt3_jax_tour.ipynb")


def _text(cell) -> str:
  parts = []
  for out in cell.get("outputs", []):
    if out.get("output_type") == "stream":
      parts.append(out.get("text", ""))
    elif out.get("output_type") in ("execute_result", "display_data"):
      parts.append(out.get("data", {}).get("text/plain", ""))
  return "".join(parts)


def _cell_printing(nb, marker: str) -> str:
  for cell in nb.cells:
    if cell.cell_type == "code" and marker in _text(cell):
      return _text(cell)
  raise AssertionError(f"no code cell printed {marker!r}")


@pytest.mark.slow
def test_tour_notebook_runs(monkeypatch, tmp_path):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  # The kernel inherits this environment: CPU only, and the cheap-compilation settings of conftest.py.
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("GPT3_JAX_DATA_DIR", str(tmp_path / "data_cache"))  # nothing lands in ~/.cache
  monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  # Run from the notebooks/ directory, as Jupyter would: the first cell must find the checkout from there.
  client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                   resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}})
  client.execute()  # raises CellExecutionError on any failing cell

  errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
            if out.get("output_type") == "error"]
  assert not errors, errors

  table = _cell_printing(nb, "Table D.1")
  for size in ("small", "medium", "large", "xl", "2.7b", "6.7b", "13b", "175b"):
    assert re.search(rf"^\s*{re.escape(size)}\s", table, re.M), f"{size} missing from the table:\n{table}"
  row_175b = next(line for line in table.splitlines() if line.strip().startswith("175b"))
  assert "174,6" in row_175b, row_175b
  assert "PF-days" in table

  mask = _cell_printing(nb, "local band, window=4")
  assert "(None, 4, None, 4)" in mask and "#" in mask

  losses = _cell_printing(nb, "eval loss:")
  eval_loss = float(re.search(r"eval loss:\s+([0-9.]+)", losses).group(1))
  unigram = float(re.search(r"unigram loss:\s+([0-9.]+)", losses).group(1))
  assert 0 < eval_loss < 10 and 0 < unigram < 10, losses
  assert len(re.findall(r"^\s+\d+\s+train\s+[0-9.]+$", losses, re.M)) == 6, losses

  sampled = _cell_printing(nb, "sample:")
  text = ast.literal_eval(re.search(r"^sample: (.+)$", sampled, re.M).group(1))
  assert text.startswith("def ") and len(text) > len("def "), sampled
  assert re.search(r"total log-prob -[0-9.]+ over \d+ tokens", sampled), sampled
