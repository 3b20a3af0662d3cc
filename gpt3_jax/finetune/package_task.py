r"""The embedded fine-tuning example: which standard-library package does a function come from?

  python -m gpt3_jax.finetune.package_task --out=DIR [--packages=email,logging,http,xml,asyncio,multiprocessing]

From the running interpreter's own standard library (no download), each public function or method with a
docstring becomes one example: the prompt is its `def` line and the first line of its docstring, then
`# package:`; the completion is ` <package>`. Written to DIR:

  train.jsonl, validation.jsonl   {"prompt", "completion"}: FinetuneConfig.train_path / validation_path
  package_of.jsonl                the validation examples as a generic multiple-choice task (every package a
                                  choice), so `--mode=eval --tasks=package_of --task_dir=DIR` measures the
                                  accuracy before and after fine-tuning through the likelihood of each label.

Each package contributes the same number of examples (a seeded sample of its functions), a quarter of each
package's held out for validation, so the classes are balanced in both splits.
"""

from __future__ import annotations

import ast
import json
import os
import random
import sysconfig
from typing import List, Sequence, Tuple

DEFAULT_PACKAGES = ("email", "logging", "http", "xml", "asyncio", "multiprocessing")
PER_PACKAGE = 96  # examples per package (balanced classes: chance is 1 / len(packages)); a quarter validation
PROMPT = "{signature}\n    \"\"\"{doc}\"\"\"\n# package:"


def _functions(path: str) -> List[Tuple[str, str]]:
  """(def line, first docstring line) of each public function with a docstring in one file."""
  try:
    source = open(path, encoding="utf-8").read()
    tree = ast.parse(source)
  except (SyntaxError, UnicodeDecodeError):
    return []
  lines, out = source.splitlines(), []
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
      doc = (ast.get_docstring(node) or "").strip().splitlines()
      signature = lines[node.lineno - 1].strip()
      if doc and doc[0].strip() and signature.endswith(":") and len(signature) < 100:
        out.append((signature, doc[0].strip()[:100]))
  return out


def build(packages: Sequence[str] = DEFAULT_PACKAGES, per_package: int = PER_PACKAGE, seed: int = 0):
  """(train, validation): lists of (prompt, completion, package)."""
  stdlib = sysconfig.get_paths()["stdlib"]
  rng = random.Random(seed)
  train, valid = [], []
  for package in packages:
    files = sorted(os.path.join(root, name) for root, _, names in os.walk(os.path.join(stdlib, package))
                   for name in names if name.endswith(".py") and "test" not in root.split(os.sep)[-1])
    functions = sorted(set(f for path in files for f in _functions(path)))
    if len(functions) < per_package:
      raise ValueError(f"--packages: {package!r} has {len(functions)} documented public functions in this "
                       f"Python's standard library; pick packages with at least {per_package}, e.g. "
                       f"{','.join(DEFAULT_PACKAGES)}")
    chosen = rng.sample(functions, per_package)
    cut = per_package // 4
    for i, (signature, doc) in enumerate(chosen):
      (valid if i < cut else train).append((PROMPT.format(signature=signature, doc=doc), " " + package, package))
  rng.shuffle(train)
  rng.shuffle(valid)
  return train, valid


def write(out_dir: str, packages: Sequence[str] = DEFAULT_PACKAGES, seed: int = 0) -> dict:
  train, valid = build(packages, seed=seed)
  os.makedirs(out_dir, exist_ok=True)
  for name, rows in (("train", train), ("validation", valid)):
    with open(os.path.join(out_dir, f"{name}.jsonl"), "w", encoding="utf-8") as f:
      f.writelines(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c, _ in rows)
  choices = [" " + p for p in packages]
  with open(os.path.join(out_dir, "package_of.jsonl"), "w", encoding="utf-8") as f:
    f.writelines(json.dumps({"context": p, "choices": choices, "gold": choices.index(c)}) + "\n"
                 for p, c, _ in valid)
  return {"train": len(train), "validation": len(valid), "chance": 1.0 / len(packages)}


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("out", None, "Output directory.", required=True)
  flags.DEFINE_list("packages", list(DEFAULT_PACKAGES), "Standard-library packages (the labels).")
  flags.DEFINE_integer("seed", 0, "Split and order seed.")

  def main(argv):
    del argv
    print(json.dumps(write(flags.FLAGS.out, flags.FLAGS.packages, flags.FLAGS.seed)))

  app.run(main)
