"""How fine-tuning marks what a stored row's tokens are for, inside the same int32 rows pretraining trains on.

  id >= 0                        a token that is input and, as the next token of its predecessor, a target
  -(id + 1)                      `id` as input only: its prediction is not scored (prompts, padding)
  -(vocab_size + 1 + label)      a classification row's last token: the class index `label` (no input)

Pretraining rows hold only the first kind. Both encodings live here, next to the decoders the loss uses, so the
data side (gpt3_jax/finetune) and the step (`train_step.loss_fn`) cannot disagree.
"""

from __future__ import annotations

from typing import Tuple

import jax.numpy as jnp
import numpy as np


def masked(ids) -> np.ndarray:
  """Token ids as stored when their prediction is not scored."""
  return -(np.asarray(ids, np.int64) + 1)


def label_code(label: int, vocab_size: int) -> int:
  """The stored value of a classification row's last token for class index `label`."""
  return -(vocab_size + 1 + int(label))


def classification_rows(batch, vocab_size: int) -> Tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """(input tokens [B, T], index of each row's last non-padding token [B], class index [B]) of windows
  [B, T + 1] whose rows end in a label code (the window's last column is the next row's first token)."""
  inputs = batch[:, :-1]
  labels = -inputs[:, -1] - (vocab_size + 1)
  text = inputs[:, :-1] >= 0
  last = jnp.argmax(jnp.arange(text.shape[1]) * text, axis=1)  # the rightmost unmasked token
  tokens = jnp.where(inputs < 0, -inputs - 1, inputs)
  return jnp.where(tokens >= vocab_size, 0, tokens).astype(jnp.int32), last, labels
