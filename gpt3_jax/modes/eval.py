"""--mode=eval: the newest checkpoint of --workdir (a training run, a fine-tune or a Hugging Face import) on
--tasks at each --num_fewshot K: a table on the console, one JSON document in WORKDIR/eval/, and TensorBoard
scalars `fewshot/<task>/<K>shot/<metric>` at the checkpoint's step (docs/evaluation.md)."""

from __future__ import annotations

import json
import math
import os
from typing import List, Optional


def run(workdir: str, task_names: List[str], ks: List[int], *, task_dir: Optional[str], seed: int,
        limit: int, mesh_cfg=None) -> dict:
  """Every process scores the same requests over one mesh (MeshConfig; default all devices data-parallel) and
  process 0 writes the results."""
  import jax
  from gpt3_jax import workdir as workdir_lib
  from gpt3_jax.evaluation import catalog, runner
  from gpt3_jax.parallel import mesh as mesh_lib
  if any(k < 0 for k in ks):
    raise ValueError(f"--num_fewshot={','.join(map(str, ks))}: each K must be >= 0, e.g. --num_fewshot=0,1,10")
  tasks = catalog.load_tasks(task_names, task_dir)  # every file read before the model is loaded
  loaded = workdir_lib.load_model(workdir)
  mesh = mesh_lib.make_mesh(mesh_cfg or mesh_lib.MeshConfig())
  evaluator = runner.Evaluator(loaded.cfg, loaded.params, loaded.tokenizer(), mesh=mesh)
  results = runner.evaluate_all(evaluator, tasks, ks, seed=seed, limit=limit)
  step = loaded.step if loaded.step is not None else 0
  document = {"workdir": os.path.abspath(workdir), "step": loaded.step, "seed": seed, "num_fewshot": list(ks),
              "limit": limit, "tasks": results}
  if jax.process_index() != 0:
    return document
  out_dir = os.path.join(workdir, "eval")
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f"results_step{step}.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(document, f, indent=2)
  from gpt3_jax.training.metrics import MetricsLogger
  logger = MetricsLogger(workdir)  # the training run's sinks: TensorBoard and metrics.jsonl, split 'fewshot'
  for task, by_k in results.items():
    for k, result in by_k.items():
      logger.write(step, {f"{task}/{k}shot/{m}": v["value"] for m, v in result["metrics"].items()
                          if math.isfinite(v["value"])}, prefix="fewshot")
  logger.close()
  print(runner.format_table(results))
  print(f"results: {path}")
  return document
