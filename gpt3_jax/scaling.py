"""Scaling-law fits to sweep results: the paper's power law in compute and the Chinchilla form in N and D.

  python -m gpt3_jax.scaling --results=RESULTS.csv --out=DIR [--budget=1e21]

RESULTS.csv has one row per finished run: `params` (N, non-embedding parameters, as Kaplan et al. and the
paper's Figure 3.1 count them), `tokens` (D, training tokens), `flops` (C, the run's training FLOPs: the model's
FLOPs per token times D, `model.config.flops_per_token`, not 6N) and `loss` (validation nats/token); other columns
are kept but unused. It writes DIR/fits.json and DIR/loss_vs_compute.png, DIR/loss_vs_params.png.

- Compute: L(C) = a * C^b (Brown et al. 2020, Figure 3.1; Kaplan et al. 2020), optionally + an irreducible c.
- Chinchilla (Hoffmann et al. 2022, Approach 3): L(N, D) = E + A / N^alpha + B / D^beta, fitted as they do: the
  Huber loss (delta 1e-3) of log L against log(exp(a - alpha log N) + exp(b - beta log D) + exp(e)), minimized with
  L-BFGS from the best of a grid of starts. The compute-optimal N and D for a budget C minimize L(N, D) subject to
  C = k N D, with k the study's own FLOPs per token per parameter (the median of flops / (params * tokens)).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
from typing import Dict, Optional, Sequence

import numpy as np

HUBER_DELTA = 1e-3


def huber(residuals: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
  """The Huber loss divided by delta^2: the same minimizer, on a scale L-BFGS's stopping test (absolute below 1)
  does not stop early on."""
  r = np.abs(residuals) / delta
  return np.where(r <= 1.0, 0.5 * r ** 2, r - 0.5)


@dataclasses.dataclass(frozen=True)
class PowerLaw:
  """L(C) = a * C^b + c."""
  a: float
  b: float
  c: float = 0.0

  def __call__(self, compute):
    return self.a * np.asarray(compute, np.float64) ** self.b + self.c


def fit_power_law(compute: Sequence[float], loss: Sequence[float], irreducible: bool = False) -> PowerLaw:
  """Least squares in log-log (exact for c = 0); with `irreducible`, the Huber loss in log space over (log a, b, c)
  by L-BFGS from a grid of starts (c below the smallest loss)."""
  from scipy import optimize
  x, y = np.log(np.asarray(compute, np.float64)), np.log(np.asarray(loss, np.float64))
  b, log_a = np.polyfit(x, y, 1)
  if not irreducible:
    return PowerLaw(float(math.exp(log_a)), float(b))
  floor = float(np.min(loss))

  def objective(theta):
    log_a_, b_, c_ = theta
    pred = np.exp(log_a_ + b_ * x) + c_
    return np.sum(huber(np.log(np.maximum(pred, 1e-12)) - y)) if np.all(pred > 0) else 1e9

  best = None
  for c0 in np.linspace(0.0, 0.95 * floor, 8):
    b0, la0 = np.polyfit(x, np.log(np.maximum(np.exp(y) - c0, 1e-9)), 1)
    result = optimize.minimize(objective, [la0, b0, c0], method="L-BFGS-B",
                               bounds=[(None, None), (None, 0.0), (0.0, floor)])
    if best is None or result.fun < best.fun:
      best = result
  return PowerLaw(float(math.exp(best.x[0])), float(best.x[1]), float(best.x[2]))


@dataclasses.dataclass(frozen=True)
class Chinchilla:
  """L(N, D) = E + A / N^alpha + B / D^beta."""
  E: float
  A: float
  B: float
  alpha: float
  beta: float

  def __call__(self, n, d):
    n, d = np.asarray(n, np.float64), np.asarray(d, np.float64)
    return self.E + self.A / n ** self.alpha + self.B / d ** self.beta

  def compute_optimal(self, budget: float, flops_per_token_per_param: float = 6.0) -> Dict[str, float]:
    """The N and D that minimize L(N, D) with k N D = budget (closed form), and the loss there."""
    a, b = self.alpha, self.beta
    g = (a * self.A / (b * self.B)) ** (1.0 / (a + b))
    n = g * (budget / flops_per_token_per_param) ** (b / (a + b))
    d = budget / (flops_per_token_per_param * n)
    return {"params": float(n), "tokens": float(d), "loss": float(self(n, d)), "tokens_per_param": float(d / n)}


def fit_chinchilla(params: Sequence[float], tokens: Sequence[float], loss: Sequence[float],
                   refine: int = 16) -> Chinchilla:
  """Hoffmann et al.'s Approach 3 fit (module docstring): their grid of initial values (a, b in 0..25 by 5, e in
  -1..1 by 0.5, alpha, beta in 0..2 by 0.5) is scored at once, and L-BFGS (analytic gradient) refines the
  `refine` best starts."""
  from scipy import optimize
  log_n, log_d = np.log(np.asarray(params, np.float64)), np.log(np.asarray(tokens, np.float64))
  log_l = np.log(np.asarray(loss, np.float64))

  def terms(theta):
    a, b, e, alpha, beta = (np.asarray(t)[..., None] for t in theta)
    return np.stack(np.broadcast_arrays(a - alpha * log_n, b - beta * log_d, e + 0 * log_n))  # [3, ..., runs]

  def objective(theta):
    z = terms(theta)
    top = z.max(axis=0)
    w = np.exp(z - top)
    r = top + np.log(w.sum(axis=0)) - log_l
    g = np.clip(r / HUBER_DELTA, -1.0, 1.0) / HUBER_DELTA  # d huber / d r
    p = w / w.sum(axis=0)  # d lse / d term
    grad = np.array([np.sum(g * p[0]), np.sum(g * p[1]), np.sum(g * p[2]),
                     -np.sum(g * p[0] * log_n), -np.sum(g * p[1] * log_d)])
    return float(np.sum(huber(r))), grad

  grid = np.array(list(itertools.product(np.arange(0, 30, 5.0), np.arange(0, 30, 5.0), np.arange(-1.0, 1.5, 0.5),
                                         np.arange(0.0, 2.5, 0.5), np.arange(0.0, 2.5, 0.5))))
  z = terms(grid.T)
  top = z.max(axis=0)
  scores = np.sum(huber(top + np.log(np.exp(z - top).sum(axis=0)) - log_l), axis=-1)
  best = None
  for start in grid[np.argsort(scores)[:refine]]:
    result = optimize.minimize(objective, start, jac=True, method="L-BFGS-B")
    if best is None or result.fun < best.fun:
      best = result
  a, b, e, alpha, beta = best.x
  return Chinchilla(E=float(math.exp(e)), A=float(math.exp(a)), B=float(math.exp(b)), alpha=float(alpha),
                    beta=float(beta))


def identified(fit: Chinchilla, loss: Sequence[float]) -> bool:
  """False when the fit sits where the runs cannot pin it down: an exponent above 2 (a step, not a power law) or
  an irreducible loss near 0 (the runs are far from the law's regime, e.g. loss not falling with N)."""
  return fit.alpha <= 2.0 and fit.beta <= 2.0 and fit.E >= 0.01 * float(np.min(loss))


def read_results(path: str) -> Dict[str, np.ndarray]:
  """The columns of a results CSV as float arrays (rows without a finite loss are left out)."""
  import csv
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  need = ("params", "tokens", "flops", "loss")
  missing = [c for c in need if not rows or c not in rows[0]]
  if missing:
    raise ValueError(f"{path}: no column(s) {missing}; a results CSV has {list(need)} (the sweep's results.csv)")
  cols = {c: np.array([float(r[c]) if r[c] not in ("", None) else np.nan for r in rows]) for c in need}
  keep = np.isfinite(cols["loss"])
  if keep.sum() < 5:
    raise ValueError(f"{path}: {int(keep.sum())} finished runs; a fit needs at least 5")
  return {c: v[keep] for c, v in cols.items()}


def fit_all(results: Dict[str, np.ndarray], budget: Optional[float] = None) -> dict:
  k = float(np.median(results["flops"] / (results["params"] * results["tokens"])))
  power = fit_power_law(results["flops"], results["loss"])
  chinchilla = fit_chinchilla(results["params"], results["tokens"], results["loss"])
  budget = budget or float(np.max(results["flops"])) * 10.0
  return {"power_law": dataclasses.asdict(power), "chinchilla": dataclasses.asdict(chinchilla),
          "flops_per_token_per_param": k, "budget": budget,
          "compute_optimal": chinchilla.compute_optimal(budget, k), "runs": int(len(results["loss"])),
          "chinchilla_identified": identified(chinchilla, results["loss"])}


def plot(results: Dict[str, np.ndarray], fits: dict, out: str) -> Sequence[str]:
  """loss_vs_compute.png (the runs, the power law extrapolated to the budget) and loss_vs_params.png (loss against
  N per token budget, with the Chinchilla curves)."""
  from matplotlib.figure import Figure  # no pyplot: no backend is chosen (scripts, notebooks)
  power, chin = PowerLaw(**fits["power_law"]), Chinchilla(**fits["chinchilla"])
  paths = [os.path.join(out, "loss_vs_compute.png"), os.path.join(out, "loss_vs_params.png")]
  fig = Figure(figsize=(6, 4), layout="tight")
  ax = fig.subplots()
  ax.scatter(results["flops"], results["loss"], c=np.log10(results["params"]), cmap="viridis", s=18)
  c = np.logspace(np.log10(results["flops"].min()), np.log10(fits["budget"]), 100)
  ax.plot(c, power(c), "k--", label=f"L = {power.a:.3g} C^{power.b:.3f}")
  ax.set(xscale="log", yscale="log", xlabel="training FLOPs", ylabel="validation loss (nats/token)")
  ax.legend()
  fig.savefig(paths[0], dpi=120)
  fig = Figure(figsize=(6, 4), layout="tight")
  ax = fig.subplots()
  n = np.logspace(np.log10(results["params"].min()) - 0.3, np.log10(results["params"].max()) + 0.3, 100)
  for d in np.unique(results["tokens"]):
    at = results["tokens"] == d
    line = ax.plot(n, chin(n, d), "--", lw=1)[0]
    ax.scatter(results["params"][at], results["loss"][at], color=line.get_color(), s=18, label=f"D = {d:.2g}")
  ax.set(xscale="log", xlabel="non-embedding parameters N", ylabel="validation loss (nats/token)",
         title=f"E={chin.E:.2f} alpha={chin.alpha:.2f} beta={chin.beta:.2f}")
  ax.legend(fontsize=7)
  fig.savefig(paths[1], dpi=120)
  return paths


def main(argv=None) -> None:
  del argv
  results = read_results(FLAGS.results)
  fits = fit_all(results, FLAGS.budget)
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(os.path.join(FLAGS.out, "fits.json"), "w") as f:
    json.dump(fits, f, indent=2)
  paths = plot(results, fits, FLAGS.out)
  p, c, opt = fits["power_law"], fits["chinchilla"], fits["compute_optimal"]
  print(f"{fits['runs']} runs; FLOPs per token per parameter {fits['flops_per_token_per_param']:.2f}")
  print(f"power law: L(C) = {p['a']:.4g} * C^{p['b']:.4f}")
  print(f"Chinchilla: L(N, D) = {c['E']:.3f} + {c['A']:.4g} / N^{c['alpha']:.3f} + {c['B']:.4g} / D^{c['beta']:.3f}")
  if not fits["chinchilla_identified"]:
    print("warning: these runs do not identify the Chinchilla form (an exponent above 2 or E near 0: the loss "
          "does not follow a power law in N and D here); do not read the compute-optimal N and D below")
  print(f"compute-optimal at {fits['budget']:.3g} FLOPs: N = {opt['params']:.3g}, D = {opt['tokens']:.3g} "
        f"({opt['tokens_per_param']:.1f} tokens per parameter), L = {opt['loss']:.3f}")
  print("wrote", os.path.join(FLAGS.out, "fits.json"), *paths)


if __name__ == "__main__":
  from absl import app, flags
  from gpt3_jax import errors
  flags.DEFINE_string("results", None, "A results CSV with params, tokens, flops and loss columns.", required=True)
  flags.DEFINE_string("out", None, "Where fits.json and the plots go.", required=True)
  flags.DEFINE_float("budget", None, "FLOPs budget for the compute-optimal N and D (default: 10x the largest run).")
  FLAGS = flags.FLAGS
  app.run(errors.one_line_errors(main))
