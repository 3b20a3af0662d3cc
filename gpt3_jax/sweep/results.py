"""A sweep's results: results.csv and results.md (one row per trial: state, objective, bindings, N, D, FLOPs and
validation loss, the columns `python -m gpt3_jax.scaling` reads), TensorBoard HParams summaries in each trial's
directory, and PNG plots (the objective against each swept parameter, every trial's learning curve, and loss
against learning rate per model size)."""

from __future__ import annotations

import csv
import json
import os
from typing import Dict, List

from gpt3_jax.sweep.config import SweepConfig

SIZE_COLUMNS = ("params", "tokens", "flops")


def rows(study, cfg: SweepConfig) -> List[Dict[str, object]]:
  out = []
  for t in study.trials:
    metrics = t.user_attrs.get("eval_metrics", {})
    row = {"trial": t.number, "state": t.state.name.lower(), cfg.metric: t.value if t.value is not None else ""}
    row.update({name: t.params.get(name, "") for name in cfg.space})
    row.update({c: t.user_attrs.get(c, "") for c in SIZE_COLUMNS})
    row["loss"] = metrics.get("loss", "")
    row["error"] = t.user_attrs.get("error", "")
    row["workdir"] = t.user_attrs.get("workdir", "")
    out.append(row)
  return out


def _fmt(value) -> str:
  return f"{value:.4g}" if isinstance(value, float) else str(value).replace("|", "\\|")


def markdown_table(rows: List[Dict[str, object]], columns: List[str]) -> List[str]:
  """A markdown table's lines: floats to 4 significant digits, a missing or None cell as '-'."""
  cell = lambda v: "-" if v is None else _fmt(v)
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  return lines + ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]


def write(study, cfg: SweepConfig, sweep_dir: str, plots: bool = False) -> List[str]:
  """Writes the tables (and with `plots`, the HParams summaries and PNGs); returns the paths written."""
  table = rows(study, cfg)
  columns = list(dict.fromkeys(k for row in table for k in row))
  paths = [os.path.join(sweep_dir, "results.csv"), os.path.join(sweep_dir, "results.md")]
  with open(f"{paths[0]}.{os.getpid()}.tmp", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(table)
  os.replace(f"{paths[0]}.{os.getpid()}.tmp", paths[0])
  reverse = cfg.direction == "maximize"
  done = sorted((r for r in table if r["state"] == "complete"), key=lambda r: r[cfg.metric], reverse=reverse)
  ordered = done + [r for r in table if r["state"] != "complete"]
  shown = [c for c in columns if c != "workdir"]
  lines = markdown_table([{c: r.get(c, "") for c in shown} for r in ordered], shown)
  with open(f"{paths[1]}.{os.getpid()}.tmp", "w") as f:  # workers may write at once: each replaces the file whole
    f.write("\n".join(lines) + "\n")
  os.replace(f"{paths[1]}.{os.getpid()}.tmp", paths[1])
  if plots:
    paths += hparams(study, cfg) + plot(study, cfg, sweep_dir, table)
  return paths


def hparams(study, cfg: SweepConfig) -> List[str]:
  """Each finished trial's bindings and final metrics as a TensorBoard HParams summary in its directory
  (`tensorboard --logdir SWEEPDIR` compares the trials)."""
  from tensorboardX import SummaryWriter
  written = []
  for t in study.trials:
    workdir, metrics = t.user_attrs.get("workdir"), t.user_attrs.get("eval_metrics")
    if not workdir or not metrics or not os.path.isdir(workdir):
      continue
    directory = os.path.join(workdir, "hparams")
    if os.path.isdir(directory):
      continue
    with SummaryWriter(logdir=directory) as writer:
      values = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in t.params.items()}
      writer.add_hparams(values, {f"hparam/{k}": float(v) for k, v in metrics.items()}, name=".")
    written.append(directory)
  return written


def _curves(workdir: str):
  from gpt3_jax.training.metrics import read_metrics
  metrics = read_metrics(workdir)
  return tuple(dict(zip(*metrics.get(split, {}).get("loss", ([], [])))) for split in ("train", "eval"))


def plot(study, cfg: SweepConfig, sweep_dir: str, table) -> List[str]:
  from matplotlib.figure import Figure  # no pyplot: no backend is chosen (workers, notebooks)
  paths = []
  done = [r for r in table if r["state"] == "complete"]
  for name in cfg.space:
    fig = Figure(figsize=(5, 3.5), layout="tight")
    ax = fig.subplots()
    numeric = all(isinstance(r[name], (int, float)) for r in done)
    xs = [r[name] if numeric else str(r[name]) for r in done]
    ax.scatter(xs, [r[cfg.metric] for r in done])
    if numeric and cfg.space[name][0] == "log":
      ax.set_xscale("log")
    ax.set(xlabel=name, ylabel=cfg.metric, title=f"{len(done)} finished trials")
    paths.append(os.path.join(sweep_dir, f"objective_vs_{name.replace('.', '_')}.png"))
    fig.savefig(paths[-1], dpi=110)
  fig = Figure(figsize=(6, 4), layout="tight")
  ax = fig.subplots()
  for r in table:
    train, evaluation = _curves(str(r["workdir"])) if r["workdir"] else ({}, {})
    if train:
      line = ax.plot(list(train), list(train.values()), lw=0.8, alpha=0.6, label=f"trial {r['trial']} ({r['state']})")
      if evaluation:
        ax.plot(list(evaluation), list(evaluation.values()), "o", color=line[0].get_color(), ms=3)
  ax.set(xlabel="step", ylabel="loss (lines: train, dots: validation)", yscale="log")
  ax.legend(fontsize=6, ncol=2)
  paths.append(os.path.join(sweep_dir, "learning_curves.png"))
  fig.savefig(paths[-1], dpi=110)
  lr = "OptimizerConfig.peak_learning_rate"
  if lr in cfg.space and done:
    fig = Figure(figsize=(5, 3.5), layout="tight")
    ax = fig.subplots()
    for size in sorted({r["params"] for r in done}, key=lambda x: float(x or 0)):
      at = sorted((r for r in done if r["params"] == size), key=lambda r: r[lr])
      label = f"N = {float(size):.3g}" if size != "" else "N = ?"
      ax.plot([r[lr] for r in at], [r["loss"] for r in at], "o-", label=label)
    ax.set(xscale="log", xlabel="peak learning rate", ylabel="validation loss", title="loss against learning rate")
    ax.legend(fontsize=7)
    paths.append(os.path.join(sweep_dir, "loss_vs_lr.png"))
    fig.savefig(paths[-1], dpi=110)
  return paths


