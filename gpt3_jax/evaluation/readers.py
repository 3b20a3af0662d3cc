"""Readers for the files users download for the standard tasks (docs/evaluation.md says where each comes from),
and one generic JSONL schema. Nothing is downloaded: each reader takes the file as it is distributed.

Formats (the prompt follows the paper's Appendix G, and lm-evaluation-harness where the paper is silent):
  hellaswag     rowanz/hellaswag data/hellaswag_{train,val}.jsonl: ctx_a, ctx_b, activity_label, endings, label
  lambada       OpenAI's lambada_test.jsonl: {"text"}; the target is the last word
  arc           AI2 ARC ARC-{Easy,Challenge}-{Train,Dev,Test}.jsonl: question.stem, question.choices, answerKey
  piqa          {train,valid}.jsonl (goal, sol1, sol2) with {train,valid}-labels.lst
  winogrande    winogrande_1.1 {train_xl,dev}.jsonl: sentence with '_', option1, option2, answer '1' / '2'
  copa          SuperGLUE COPA {train,val}.jsonl: premise, choice1, choice2, question, label
  storycloze    cloze_test_{val,test}__spring2016.csv: InputSentence1-4, RandomFifthSentenceQuiz1-2,
                AnswerRightEnding
  generic JSONL {"context", "choices", "gold"} (multiple choice), {"context", "target"} (completion) or
                {"text"} (perplexity); an optional "split" field (default "validation")
"""

from __future__ import annotations

import csv
import json
import os
import re
from typing import Dict, List

from gpt3_jax.evaluation.tasks import Example, Task


def _jsonl(path: str) -> List[dict]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"task file {path!r} does not exist; see docs/evaluation.md for where it comes from")
  with open(path, encoding="utf-8") as f:
    rows = []
    for number, line in enumerate(f, start=1):
      if line.strip():
        try:
          rows.append(json.loads(line))
        except ValueError:
          raise ValueError(f"{path}:{number} is not a JSON object") from None
  return rows


def _field(row: dict, name: str, path: str):
  if name not in row:
    raise ValueError(f"{path}: a record has no {name!r} field (fields: {sorted(row)})")
  return row[name]


def _hellaswag_text(text: str) -> str:
  text = text.strip().replace(" [title]", ". ")
  text = re.sub(r"\[.*?\]", "", text)
  return text.replace("  ", " ")


def hellaswag(path: str) -> List[Example]:
  out = []
  for row in _jsonl(path):
    context = _hellaswag_text(f"{row['activity_label']}: {row['ctx_a']} {row['ctx_b'].capitalize()}")
    out.append(Example(context=context, choices=[" " + _hellaswag_text(e) for e in row["endings"]],
                       gold=int(row["label"]) if row.get("label") not in (None, "") else None))
  return out


def lambada(path: str) -> List[Example]:
  out = []
  for row in _jsonl(path):
    context, word = _field(row, "text", path).rsplit(" ", 1)
    out.append(Example(context=context, target=" " + word))
  return out


def arc(path: str) -> List[Example]:
  out = []
  for row in _jsonl(path):
    question = row["question"]
    labels = [c["label"] for c in question["choices"]]
    out.append(Example(context=f"Question: {question['stem']}\nAnswer:",
                       choices=[" " + c["text"] for c in question["choices"]], gold=labels.index(row["answerKey"])))
  return out


def piqa(path: str, labels_path: str) -> List[Example]:
  with open(labels_path, encoding="utf-8") as f:
    labels = [int(line) for line in f if line.strip()]
  rows = _jsonl(path)
  if len(labels) != len(rows):
    raise ValueError(f"{labels_path} has {len(labels)} labels for {len(rows)} examples in {path}")
  return [Example(context=f"Question: {r['goal']}\nAnswer:", choices=[" " + r["sol1"], " " + r["sol2"]], gold=y)
          for r, y in zip(rows, labels)]


def winogrande(path: str) -> List[Example]:
  out = []
  for row in _jsonl(path):
    sentence = row["sentence"]
    cut = sentence.index("_")
    out.append(Example(choices=[sentence[:cut] + row["option1"], sentence[:cut] + row["option2"]],
                       target=" " + sentence[cut + 1:].strip(),
                       gold=int(row["answer"]) - 1 if row.get("answer") else None))
  return out


def copa(path: str) -> List[Example]:
  connective = {"cause": " because", "effect": " therefore"}
  lower_first = lambda s: s[0].lower() + s[1:]
  return [Example(context=r["premise"].strip().rstrip(".") + connective[r["question"]],
                  choices=[" " + lower_first(r["choice1"]), " " + lower_first(r["choice2"])],
                  gold=int(r["label"]) if "label" in r else None) for r in _jsonl(path)]


def storycloze(path: str) -> List[Example]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"task file {path!r} does not exist; see docs/evaluation.md for where it comes from")
  with open(path, encoding="utf-8", newline="") as f:
    rows = list(csv.DictReader(f))
  return [Example(context=" ".join(r[f"InputSentence{i}"] for i in range(1, 5)),
                  choices=[" " + r["RandomFifthSentenceQuiz1"], " " + r["RandomFifthSentenceQuiz2"]],
                  gold=int(r["AnswerRightEnding"]) - 1) for r in rows]


def generic(path: str) -> tuple[str, Dict[str, List[Example]]]:
  """(kind, examples by split) of a generic JSONL task file."""
  splits: Dict[str, List[Example]] = {}
  kinds = set()
  for row in _jsonl(path):
    if "choices" in row:
      kinds.add("multiple_choice")
      example = Example(context=row.get("context", ""), choices=list(row["choices"]), gold=int(_field(row, "gold", path)))
    elif "target" in row:
      kinds.add("completion")
      example = Example(context=_field(row, "context", path), target=row["target"])
    else:
      kinds.add("perplexity")
      example = Example(text=_field(row, "text", path))
    splits.setdefault(row.get("split", "validation"), []).append(example)
  if len(kinds) != 1:
    raise ValueError(f"{path} mixes record kinds {sorted(kinds)}; one task file holds one kind")
  return kinds.pop(), splits


def standard_task(name: str, task_dir: str) -> Task:
  """A standard task from its files under task_dir/<name>/ (names and layout: docs/evaluation.md)."""
  d = lambda *parts: os.path.join(task_dir, *parts)
  if name == "hellaswag":
    return Task(name, "multiple_choice", {"train": hellaswag(d("hellaswag", "hellaswag_train.jsonl")),
                                          "validation": hellaswag(d("hellaswag", "hellaswag_val.jsonl"))})
  if name == "lambada":
    return Task(name, "completion", {"test": lambada(d("lambada", "lambada_test.jsonl"))}, eval_split="test",
                fewshot_split="test", separator="\n\n", cloze_fewshot=True)
  if name in ("arc_easy", "arc_challenge"):
    sub = "ARC-Easy" if name == "arc_easy" else "ARC-Challenge"
    return Task(name, "multiple_choice", {"train": arc(d(name, f"{sub}-Train.jsonl")),
                                          "test": arc(d(name, f"{sub}-Test.jsonl"))},
                eval_split="test", unconditional_prompt="Answer:")
  if name == "piqa":
    return Task(name, "multiple_choice", {"train": piqa(d("piqa", "train.jsonl"), d("piqa", "train-labels.lst")),
                                          "validation": piqa(d("piqa", "valid.jsonl"), d("piqa", "valid-labels.lst"))})
  if name == "winogrande":
    return Task(name, "multiple_choice", {"train": winogrande(d("winogrande", "train_xl.jsonl")),
                                          "validation": winogrande(d("winogrande", "dev.jsonl"))}, partial=True)
  if name == "copa":
    return Task(name, "multiple_choice", {"train": copa(d("copa", "train.jsonl")),
                                          "validation": copa(d("copa", "val.jsonl"))})
  if name == "storycloze":  # no training set: demonstrations come from the development split, as in the paper
    return Task(name, "multiple_choice", {
        "validation": storycloze(d("storycloze", "cloze_test_val__spring2016.csv")),
        "test": storycloze(d("storycloze", "cloze_test_test__spring2016.csv"))},
        eval_split="test", fewshot_split="validation")
  path = d(name + ".jsonl") if not name.endswith(".jsonl") else (name if os.path.isabs(name) else d(name))
  if os.path.isfile(path):
    kind, splits = generic(path)
    base = os.path.basename(path)[:-len(".jsonl")]
    eval_split = "validation" if "validation" in splits else sorted(splits)[0]
    return Task(base, kind, splits, eval_split=eval_split, fewshot_split="train" if "train" in splits else eval_split)
  raise ValueError(f"unknown task {name!r}: use one of {', '.join(STANDARD_TASKS)}, 'embedded', or NAME for a "
                   f"generic NAME.jsonl in --task_dir")


STANDARD_TASKS = ("hellaswag", "lambada", "arc_easy", "arc_challenge", "piqa", "winogrande", "copa", "storycloze")
