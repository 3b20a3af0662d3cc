"""Evaluates a model on tasks at several K: one result document (per task, per K: the paper's metric, its value,
standard error, number of examples, and every other metric), for `--mode=eval`, the in-training hook and the
notebook.

Multiple choice reports `acc` (summed log-probability), `acc_token` (per-token normalized: the paper's default),
`acc_char` (per-character normalized: lm-evaluation-harness's acc_norm) and, for tasks the paper normalizes by
the unconditional answer probability (ARC, OpenBookQA, RACE), `acc_uncond`. Completion reports `acc` (greedy
match) and `ppl` (exp of the mean negative log-likelihood of the target). Perplexity reports `nats_per_token`
and `bits_per_byte`.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

import numpy as np

from gpt3_jax.evaluation import fewshot
from gpt3_jax.evaluation.likelihood import Scorer, encode_pair, rolling_windows
from gpt3_jax.evaluation.tasks import Task


def _stderr(values: Sequence[float]) -> float:
  return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")


def _summary(per_example: Dict[str, List[float]], primary: str, n: int, k_used: List[int], skipped: int = 0) -> dict:
  """`n` examples scored; `skipped` could not be (a continuation longer than the window)."""
  metrics = {name: {"value": float(np.mean(v)), "stderr": _stderr(v)} for name, v in per_example.items()}
  return {"metric": primary, "value": metrics[primary]["value"], "stderr": metrics[primary]["stderr"], "n": n,
          "skipped": skipped, "k_used_mean": float(np.mean(k_used)) if k_used else 0.0, "metrics": metrics}


class Evaluator:
  """Scores tasks with one model: cfg (ModelConfig), params and a tokenizer (TextTokenizer), over `mesh` (default:
  every device, data-parallel; multi-process runs pass their mesh and evaluate the same tasks in every process)."""

  def __init__(self, cfg, params, tokenizer, *, batch_size: int = 16, prefix_eot: bool = True, mesh=None):
    self.cfg, self.tok = cfg, tokenizer
    self.scorer = Scorer(cfg, params, mesh=mesh, batch_size=batch_size)
    self.prefix_eot = prefix_eot  # contexts start with end-of-text, as documents do in training

  def _ids(self, text: str) -> List[int]:
    return self.tok.encode(text)

  def _count(self, text: str) -> int:
    return len(self._ids(text)) + 1  # the leading end-of-text token

  def _score(self, requests):
    """[(log-likelihood, greedy, continuation tokens)] of (context, continuation) strings (`encode_pair`); None
    for a continuation longer than the window, which cannot be scored whole (its example is skipped, counted)."""
    pairs = [encode_pair(self.tok, c, x, prefix_eot=self.prefix_eot) for c, x in requests]
    fits = [i for i, pair in enumerate(pairs) if len(pair[1]) <= self.cfg.n_ctx]
    out = [None] * len(pairs)
    for i, (ll, greedy) in zip(fits, self.scorer.loglikelihoods([pairs[i] for i in fits])):
      out[i] = (ll, greedy, len(pairs[i][1]))
    return out

  def _scored(self, task: Task, spans, scores) -> List[int]:
    """Indices of the examples whose requests (`spans[i]`: a range of them) were all scored; at least one."""
    kept = [i for i, span in enumerate(spans) if all(scores[j] for j in span)]
    if spans and not kept:
      raise ValueError(f"task {task.name!r}: every example's continuation is longer than the model's "
                       f"n_ctx={self.cfg.n_ctx} tokens; use a model with a longer context")
    return kept

  def multiple_choice(self, task: Task, k: int, seed: int, limit: int) -> dict:
    requests, spans, k_used = [], [], []
    examples = list(task.examples)[:limit or None]
    for i, ex in enumerate(examples):
      body = "" if task.partial else ex.context
      longest = max(ex.choices, key=len) + ex.target
      pre, used = fewshot.fit(task, fewshot.draw(task, i, k, seed), body, longest, self._count, self.cfg.n_ctx)
      k_used.append(used)
      start = len(requests)
      if task.partial:  # the choices complete the context; score the shared continuation after each
        requests += [(pre + choice, ex.target) for choice in ex.choices]
      else:
        requests += [(pre + ex.context, choice) for choice in ex.choices]
        if task.unconditional_prompt:
          requests += [(task.unconditional_prompt, choice) for choice in ex.choices]
      spans.append(range(start, len(requests)))
    scores = self._score(requests)
    kept = self._scored(task, spans, scores)
    metrics: Dict[str, List[float]] = {"acc": [], "acc_token": [], "acc_char": []}
    if task.unconditional_prompt and not task.partial:
      metrics["acc_uncond"] = []
    for i in kept:
      ex, start, n = examples[i], spans[i].start, len(examples[i].choices)
      ll = np.array([scores[start + c][0] for c in range(n)])
      scored = [ex.target] * n if task.partial else list(ex.choices)
      tokens = np.array([max(1, scores[start + c][2]) for c in range(n)])
      chars = np.array([max(1, len(s)) for s in scored])
      metrics["acc"].append(float(np.argmax(ll) == ex.gold))
      metrics["acc_token"].append(float(np.argmax(ll / tokens) == ex.gold))
      metrics["acc_char"].append(float(np.argmax(ll / chars) == ex.gold))
      if "acc_uncond" in metrics:
        uncond = np.array([scores[start + n + c][0] for c in range(n)])
        metrics["acc_uncond"].append(float(np.argmax(ll - uncond) == ex.gold))
    primary = "acc_uncond" if "acc_uncond" in metrics else ("acc" if task.partial else "acc_token")
    summary = _summary(metrics, primary, len(kept), [k_used[i] for i in kept], skipped=len(examples) - len(kept))
    summary["chance"] = float(np.mean([1.0 / len(examples[i].choices) for i in kept]))
    return summary

  def completion(self, task: Task, k: int, seed: int, limit: int) -> dict:
    requests, k_used = [], []
    examples = list(task.examples)[:limit or None]
    for i, ex in enumerate(examples):
      body = task.cloze(ex) if (task.cloze_fewshot and k > 0) else ex.context
      pre, used = fewshot.fit(task, fewshot.draw(task, i, k, seed), body, ex.target, self._count, self.cfg.n_ctx)
      k_used.append(used)
      requests.append((pre + body, ex.target))
    every = self._score(requests)
    kept = self._scored(task, [range(i, i + 1) for i in range(len(examples))], every)
    scores = [every[i] for i in kept]
    summary = _summary({"acc": [float(g) for _, g, _ in scores], "loglik": [ll for ll, _, _ in scores]}, "acc",
                       len(kept), [k_used[i] for i in kept], skipped=len(examples) - len(kept))
    summary["metrics"]["ppl"] = {"value": math.exp(-summary["metrics"]["loglik"]["value"]), "stderr": float("nan")}
    return summary

  def perplexity(self, task: Task, limit: int) -> dict:
    """Each text after an end-of-text token, in windows of n_ctx predictions (`likelihood.rolling_windows`)."""
    requests, n_bytes, n_tokens = [], 0, 0
    for ex in list(task.examples)[:limit or None]:
      ids = [self.tok.eot_id] + self._ids(ex.text)
      n_bytes, n_tokens = n_bytes + len(ex.text.encode("utf-8")), n_tokens + len(ids) - 1
      requests += rolling_windows(ids, self.cfg.n_ctx)
    total = -sum(ll for ll, _ in self.scorer.loglikelihoods(requests))
    metrics = {"nats_per_token": {"value": total / n_tokens, "stderr": float("nan")},
               "bits_per_byte": {"value": total / math.log(2) / n_bytes, "stderr": float("nan")}}
    return {"metric": "nats_per_token", "value": metrics["nats_per_token"]["value"], "stderr": float("nan"),
            "n": len(task.examples[:limit or None]), "k_used_mean": 0.0, "metrics": metrics}

  def evaluate(self, task: Task, k: int, seed: int = 0, limit: int = 0) -> dict:
    if task.kind == "multiple_choice":
      return self.multiple_choice(task, k, seed, limit)
    if task.kind == "completion":
      return self.completion(task, k, seed, limit)
    return self.perplexity(task, limit)


def evaluate_all(evaluator: Evaluator, tasks: Sequence[Task], ks: Sequence[int], seed: int = 0,
                 limit: int = 0) -> Dict[str, Dict[str, dict]]:
  """{task: {K: result}}; perplexity tasks are evaluated once (K does not apply), under K '0'."""
  return {t.name: {str(k): evaluator.evaluate(t, k, seed, limit) for k in (ks if t.kind != "perplexity" else [0])}
          for t in tasks}


def format_table(results: Dict[str, Dict[str, dict]]) -> str:
  lines = [f"{'task':16s} {'K':>3s} {'metric':>14s} {'value':>8s} {'stderr':>8s} {'n':>6s}  other"]
  for task, by_k in results.items():
    for k, r in by_k.items():
      other = ", ".join(f"{m} {v['value']:.4f}" for m, v in r["metrics"].items() if m != r["metric"])
      if r.get("skipped"):
        other += f", skipped {r['skipped']} (longer than n_ctx)"
      lines.append(f"{task:16s} {k:>3s} {r['metric']:>14s} {r['value']:8.4f} {r['stderr']:8.4f} {r['n']:6d}  {other}")
  return "\n".join(lines)
