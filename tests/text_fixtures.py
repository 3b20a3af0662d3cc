"""Small test doubles and files shared by the evaluation and fine-tuning tests."""

import json
import os


class CharTokenizer:
  """Test double: 'a'..'o' are tokens 1..15, end-of-text is 0."""
  eot_id = 0

  def encode(self, text):
    return [ord(c) - ord("a") + 1 for c in text]

  def decode(self, ids):
    return "".join(chr(i + ord("a") - 1) for i in ids if i)


def write_jsonl(path, rows):
  """One JSON object per line (a str row is written as it is, e.g. a deliberately broken line); returns the path."""
  os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.writelines((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
  return str(path)


def keyword_sentences(labels, n_train=160, n_held_out=60, seed=3):
  """A synthetic two-class task: (sentence, label) pairs whose label says which keyword set the sentence holds
  (labels[0]: json / email / http, labels[1]: class / import / return) among three filler words; the held-out
  sentences are filler combinations not in the training ones."""
  import numpy as np
  rng = np.random.default_rng(seed)
  sets = {labels[0]: ["json", "email", "http"], labels[1]: ["class", "import", "return"]}
  filler = ["the", "a", "of", "value", "list", "file", "name", "data"]

  def example():
    label = labels[rng.integers(2)]
    words = list(rng.choice(filler, 3)) + [str(rng.choice(sets[label]))]
    rng.shuffle(words)
    return " ".join(words), label

  train = [example() for _ in range(n_train)]
  return train, [e for e in (example() for _ in range(200)) if e not in train][:n_held_out]
