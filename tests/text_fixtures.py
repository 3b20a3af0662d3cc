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
