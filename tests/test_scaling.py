"""Scaling-law fits recover the parameters of synthetic sweep results generated from known laws with noise, and
`python -m gpt3_jax.scaling` writes the fits and non-empty plots from a results CSV."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gpt3_jax import scaling

# Hoffmann et al. (2022), Approach 3's published fit.
TRUE = scaling.Chinchilla(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def _grid(noise, seed=0):
  """6 model sizes x 5 token budgets, the loss with multiplicative noise of `noise` (log-normal std)."""
  rng = np.random.default_rng(seed)
  n, d = np.repeat(np.logspace(6, 9, 6), 5), np.tile(np.logspace(8, 11, 5), 6)
  return n, d, TRUE(n, d) * np.exp(rng.normal(0.0, noise, n.shape))


def test_the_power_law_in_compute_is_recovered():
  rng = np.random.default_rng(1)
  c = np.logspace(15, 20, 12)
  plain = scaling.fit_power_law(c, 50.0 * c ** -0.05 * np.exp(rng.normal(0, 0.003, c.shape)))
  assert plain.a == pytest.approx(50.0, rel=0.05) and plain.b == pytest.approx(-0.05, abs=0.002) and plain.c == 0
  law = scaling.PowerLaw(a=2000.0, b=-0.2, c=1.7)
  fit = scaling.fit_power_law(c, law(c) * np.exp(rng.normal(0, 0.002, c.shape)), irreducible=True)
  assert fit.b == pytest.approx(-0.2, abs=0.01) and fit.c == pytest.approx(1.7, abs=0.02)


def test_the_chinchilla_form_and_its_compute_optimum_are_recovered():
  fit = scaling.fit_chinchilla(*_grid(noise=0.005))
  # Within 0.5% noise on 30 runs: the exponents to 0.02, E to 3%; A and B trade off against the exponents, so the
  # check on them is through the compute-optimal allocation they imply (N within 15%, its loss within 0.5%).
  assert fit.alpha == pytest.approx(0.34, abs=0.02) and fit.beta == pytest.approx(0.28, abs=0.02)
  assert fit.E == pytest.approx(1.69, rel=0.03)
  want, got = TRUE.compute_optimal(1e21), fit.compute_optimal(1e21)
  assert got["params"] == pytest.approx(want["params"], rel=0.15) and got["loss"] == pytest.approx(want["loss"],
                                                                                                   rel=0.005)
  # The closed form is the constrained minimum: any other N at the same budget has a higher loss.
  n = want["params"] * np.array([0.5, 0.9, 1.1, 2.0])
  assert np.all(TRUE(n, 1e21 / (6 * n)) > want["loss"])


def test_a_fit_the_runs_cannot_identify_is_flagged():
  # The mini-study's degenerate fit (docs/sweeps.md): a step in N and no irreducible loss.
  assert not scaling.identified(scaling.Chinchilla(E=0.0, A=1e60, B=17.0, alpha=13.0, beta=0.1), [4.7])
  assert scaling.identified(TRUE, [2.0])


def test_the_command_writes_fits_and_plots(tmp_path):
  pytest.importorskip("matplotlib")
  n, d, loss = _grid(noise=0.005, seed=2)
  path = tmp_path / "results.csv"
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["trial", "params", "tokens", "flops", "loss"])
    for i, row in enumerate(zip(n, d, 6.2 * n * d, loss)):  # 6.2: the model's FLOPs per token, not 6N
      writer.writerow([i, *row])
    writer.writerow([99, 1e6, 1e8, 6.2e14, ""])  # an unfinished trial is left out
  out = tmp_path / "fits"
  proc = subprocess.run([sys.executable, "-m", "gpt3_jax.scaling", f"--results={path}", f"--out={out}",
                         "--budget=1e21"], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  fits = json.load(open(out / "fits.json"))
  assert fits["runs"] == 30 and fits["flops_per_token_per_param"] == pytest.approx(6.2)
  assert fits["chinchilla"]["alpha"] == pytest.approx(0.34, abs=0.02) and fits["chinchilla_identified"]
  assert "warning" not in proc.stdout
  assert all(os.path.getsize(out / name) > 10_000 for name in ("loss_vs_compute.png", "loss_vs_params.png"))
  assert "compute-optimal at 1e+21 FLOPs" in proc.stdout
  bad = subprocess.run([sys.executable, "-m", "gpt3_jax.scaling", f"--results={tmp_path / 'fits' / 'fits.json'}",
                        f"--out={out}"], capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "no column(s)" in bad.stderr
