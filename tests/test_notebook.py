"""The exploration notebook (notebooks/gpt3_jax_tour.ipynb) runs headless, end to end, with real outputs."""

import ast
import base64
import io
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


def _images(nb):
  """Every PNG the notebook shows (inline figures and displayed image files), decoded to pixel arrays."""
  import matplotlib.image
  return [matplotlib.image.imread(io.BytesIO(base64.b64decode(out["data"]["image/png"])), format="png")
          for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
          if "image/png" in out.get("data", {})]


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
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
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
  assert 0 < eval_loss < unigram < 10, losses  # the run beats the unigram baseline
  assert "below the unigram baseline" in losses, losses
  assert len(re.findall(r"^\s+\d+\s+train\s+[0-9.]+$", losses, re.M)) == 12, losses

  sampled = _cell_printing(nb, "sample:")
  text = ast.literal_eval(re.search(r"^sample: (.+)$", sampled, re.M).group(1))
  assert text.startswith("def ") and len(text) > len("def "), sampled
  assert re.search(r"total log-prob -[0-9.]+ over \d+ tokens", sampled), sampled

  assert re.search(r"weights \(2, 4, \d+, \d+\) \(layers, heads, queries, keys\)",
                   _cell_printing(nb, "(layers, heads, queries, keys)"))
  table = _cell_printing(nb, "chance: 0.25")
  accuracies = re.findall(r"^embedded_next_line\s+([01])\s+acc\w*\s+([0-9.]+)", table, re.M)
  assert [k for k, _ in accuracies] == ["0", "1"], table
  assert all(0 <= float(a) <= 1 for _, a in accuracies), table

  sweep = _cell_printing(nb, "trials (")
  assert "6 trials (6 complete)" in sweep, sweep
  fit = _cell_printing(nb, "runs: L(C) =")
  assert re.search(r"6 runs: L\(C\) = [0-9.e+-]+ \* C\^-[0-9.]+", fit), fit  # the loss falls with compute

  # Figures: masks, training curves, two layers' attention, two sweep plots, two fits; each shows something
  # (a blank figure is one colour).
  images = _images(nb)
  assert len(images) == 8, len(images)
  for image in images:
    assert image.shape[0] > 100 and image.shape[1] > 100, image.shape
    assert image[..., :3].std() > 0.05, "a blank figure"
