"""FinetuneConfig: where the prompt / completion examples are and how to read them (gin: `FinetuneConfig.*`)."""

from __future__ import annotations

import dataclasses

BAD_EXAMPLE_POLICIES = ("error", "skip")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
  """Supervised fine-tuning data (`gpt3_jax/finetune/sft_data.py`, docs/finetuning.md).

  Attributes:
    train_path: JSONL file of training examples: {prompt_field, completion_field} per line, or a
      `messages_field` list of {"role", "content"} (the last message is the completion).
    validation_path: JSONL file of held-out examples; empty: the last `validation_fraction` of train_path.
    validation_fraction: with no validation_path, the share of train_path's examples held out (at least one).
    prompt_field, completion_field, messages_field: field names.
    on_bad_example: 'error' (a one-line error naming the line) or 'skip' (counted, reported) for an example
      with a missing field, an empty completion, or one longer than the sequence.
    seed: the data-order seed.
  """

  train_path: str = ""
  validation_path: str = ""
  validation_fraction: float = 0.1
  prompt_field: str = "prompt"
  completion_field: str = "completion"
  messages_field: str = "messages"
  on_bad_example: str = "error"
  seed: int = 0

  def __post_init__(self):
    if self.on_bad_example not in BAD_EXAMPLE_POLICIES:
      raise ValueError(f"FinetuneConfig.on_bad_example={self.on_bad_example!r} must be one of "
                       f"{BAD_EXAMPLE_POLICIES}, e.g. FinetuneConfig.on_bad_example = 'skip'")
    if not 0.0 < self.validation_fraction < 1.0:
      raise ValueError(f"FinetuneConfig.validation_fraction={self.validation_fraction} must be in (0, 1), e.g. 0.1")
