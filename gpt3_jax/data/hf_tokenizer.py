"""A Hugging Face tokenizer (GPT-2's byte-level BPE, or any `tokenizer.json`) behind our tokenizer interface.

Reads a directory with `tokenizer.json`, or with `vocab.json` + `merges.txt` (the GPT-2 files, assembled as
GPT2TokenizerFast does: byte-level pre-tokenizer without a prefix space, byte-level decoder), through the
`tokenizers` package. The end-of-text id is `<|endoftext|>`'s (GPT-2's delimiter), else the `eos_token` named in
tokenizer_config.json / special_tokens_map.json.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Optional, Sequence

from gpt3_jax.data.tokenizer import EOT_PIECE


def is_hf_tokenizer_dir(path: str) -> bool:
  return os.path.isdir(path) and (os.path.isfile(os.path.join(path, "tokenizer.json")) or (
      os.path.isfile(os.path.join(path, "vocab.json")) and os.path.isfile(os.path.join(path, "merges.txt"))))


def _named_eos(directory: str) -> Optional[str]:
  for name in ("tokenizer_config.json", "special_tokens_map.json"):
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      with open(path, encoding="utf-8") as f:
        eos = json.load(f).get("eos_token")
      if isinstance(eos, dict):
        eos = eos.get("content")
      if eos:
        return eos
  return None


class HFTokenizer:
  """encode / decode / vocab_size / eot_id / fingerprint, as `gpt3_jax.data.tokenizer.Tokenizer`."""

  def __init__(self, tokenizer, eot_piece: Optional[str] = None):
    self._tok = tokenizer
    eot = None
    for piece in (EOT_PIECE, eot_piece):
      if piece and tokenizer.token_to_id(piece) is not None:
        eot = tokenizer.token_to_id(piece)
        break
    if eot is None:
      raise ValueError(f"the Hugging Face tokenizer has no {EOT_PIECE} or eos_token; it cannot delimit documents")
    self._eot_id = eot
    self._fingerprint = hashlib.sha256(tokenizer.to_str().encode("utf-8")).hexdigest()

  @classmethod
  def load(cls, directory: str) -> HFTokenizer:
    import tokenizers
    if os.path.isfile(os.path.join(directory, "tokenizer.json")):
      tok = tokenizers.Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
    elif is_hf_tokenizer_dir(directory):
      from tokenizers import decoders, models, pre_tokenizers
      tok = tokenizers.Tokenizer(models.BPE.from_file(os.path.join(directory, "vocab.json"),
                                                      os.path.join(directory, "merges.txt")))
      tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
      tok.decoder = decoders.ByteLevel()
      if tok.token_to_id(EOT_PIECE) is not None:
        tok.add_special_tokens([EOT_PIECE])
    else:
      raise FileNotFoundError(f"{directory!r} has neither tokenizer.json nor vocab.json + merges.txt")
    return cls(tok, _named_eos(directory))

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  @property
  def eot_id(self) -> int:
    return self._eot_id

  @property
  def fingerprint(self) -> str:
    return self._fingerprint

  def encode(self, text: str) -> list[int]:
    """Ids of `text` with no special tokens added."""
    return self._tok.encode(text, add_special_tokens=False).ids if text else []

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`; special tokens (end-of-text included) are rendered as their strings."""
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)
