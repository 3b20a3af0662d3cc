"""FinetuneConfig: where the fine-tuning examples are, what they teach and how to read them (gin:
`FinetuneConfig.*`)."""

from __future__ import annotations

import dataclasses
from typing import Tuple

BAD_EXAMPLE_POLICIES = ("error", "skip")
TASKS = ("generate", "classify")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
  """Fine-tuning data (`gpt3_jax/finetune/sft_data.py`, docs/finetuning.md).

  Attributes:
    task: 'generate' (prompt / completion, the loss on the completion) or 'classify' (text / label, a
      classification head on the last token trained with cross-entropy over the labels).
    train_path: JSONL file of training examples. generate: {prompt_field, completion_field} per line, or a
      `messages_field` list of {"role", "content"} (the last message is the completion). classify:
      {text_field, label_field}.
    validation_path: JSONL file of held-out examples; empty: the last `validation_fraction` of train_path.
    tfds_name: instead of the JSONL files, a TFDS dataset prepared as ArrayRecord (e.g. 'my_task/default:1.0.0'
      in `tfds_data_dir`), read from its `train_split` and `validation_split` ('' : hold out the tail).
    validation_fraction: with no validation file or split, the share of the training examples held out.
    prompt_field, completion_field, messages_field: generate's field names (JSON keys or TFDS features).
    text_field, label_field: classify's field names.
    labels: classify: the class names in order (a label outside them is a bad example); empty: the sorted
      distinct labels of the training examples.
    on_bad_example: 'error' (a one-line error naming the line) or 'skip' (counted, reported) for an example
      with a missing field, an empty completion, an unknown label, or one longer than the sequence.
    seed: the data-order seed.
  """

  task: str = "generate"
  train_path: str = ""
  validation_path: str = ""
  tfds_name: str = ""
  tfds_data_dir: str = ""
  train_split: str = "train"
  validation_split: str = "validation"
  validation_fraction: float = 0.1
  prompt_field: str = "prompt"
  completion_field: str = "completion"
  messages_field: str = "messages"
  text_field: str = "text"
  label_field: str = "label"
  labels: Tuple[str, ...] = ()
  on_bad_example: str = "error"
  seed: int = 0

  def __post_init__(self):
    object.__setattr__(self, "labels", tuple(str(x) for x in self.labels))
    from gpt3_jax.config_types import check_choice
    check_choice("FinetuneConfig", "task", self.task, TASKS)
    check_choice("FinetuneConfig", "on_bad_example", self.on_bad_example, BAD_EXAMPLE_POLICIES)
    if not 0.0 < self.validation_fraction < 1.0:
      raise ValueError(f"FinetuneConfig.validation_fraction={self.validation_fraction} must be in (0, 1), e.g. 0.1")
    if self.tfds_name and (self.train_path or self.validation_path):
      raise ValueError("FinetuneConfig: set either tfds_name or train_path / validation_path, not both")
    if len(self.labels) == 1 or len(set(self.labels)) != len(self.labels):
      raise ValueError(f"FinetuneConfig.labels={self.labels!r} must be at least two distinct names (or empty: "
                       f"the training labels)")
