"""What an evaluation task is: its examples per split and how the paper scores them.

Kinds:
  multiple_choice  score each choice as a continuation of the context; the highest wins. `partial`: the choices
                   are contexts and one shared continuation is scored after each (Winograd-style "partial"
                   scoring, Section 3.4 / Appendix G).
  completion       greedy match of the target continuation (LAMBADA's last word) and its probability.
  perplexity       nats per token and bits per byte of the texts (comparable across tokenizers).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Sequence

KINDS = ("multiple_choice", "completion", "perplexity")


@dataclasses.dataclass(frozen=True)
class Example:
  context: str = ""
  choices: Sequence[str] = ()  # multiple choice: the continuations (partial: the contexts' endings)
  gold: Optional[int] = None
  target: str = ""  # completion: the continuation to match; partial multiple choice: the shared continuation
  text: str = ""  # perplexity


@dataclasses.dataclass(frozen=True)
class Task:
  """A task's examples by split ('train', 'validation', 'test') and its protocol."""
  name: str
  kind: str
  splits: Dict[str, Sequence[Example]]
  eval_split: str = "validation"
  fewshot_split: str = "train"  # where demonstrations are drawn from
  separator: str = "\n\n"  # between demonstrations and before the example
  partial: bool = False
  unconditional_prompt: Optional[str] = None  # ARC / OpenBookQA / RACE: normalize by P(answer | "Answer:")
  cloze_fewshot: bool = False  # LAMBADA: the fill-in-the-blank format with K > 0

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"task {self.name!r}: kind {self.kind!r}; use one of {KINDS}")
    if self.eval_split not in self.splits:
      raise ValueError(f"task {self.name!r} has no {self.eval_split!r} split (it has {sorted(self.splits)})")

  @property
  def examples(self) -> Sequence[Example]:
    return self.splits[self.eval_split]

  def demonstrations(self) -> Sequence[Example]:
    return self.splits.get(self.fewshot_split) or ()

  def demo_text(self, example: Example) -> str:
    """A solved example as a demonstration."""
    if self.kind == "multiple_choice":
      if self.partial:
        return example.choices[example.gold] + example.target
      return example.context + example.choices[example.gold]
    if self.kind == "completion":
      return self.cloze(example) + example.target if self.cloze_fewshot else example.context + example.target
    return example.text

  def cloze(self, example: Example) -> str:
    """LAMBADA's few-shot format (Section 3.1.2): 'context ____. ->' before the target word."""
    return example.context + " ____. ->"
