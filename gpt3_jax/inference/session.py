"""A trained model ready to sample from or score: params, config and tokenizer loaded from a workdir.

Reads the newest checkpoint of a training run or a Hugging Face import written by `python -m gpt3_jax.convert
--from_hf` (with its tokenizer files), through `gpt3_jax.workdir.load_model`.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

import jax
import numpy as np

from gpt3_jax import workdir as workdir_lib
from gpt3_jax.data.tokenizer import TextTokenizer, load_tokenizer
from gpt3_jax.inference import attention_maps, sampling, scoring
from gpt3_jax.model.config import ModelConfig


@dataclasses.dataclass
class Session:
  cfg: ModelConfig
  params: dict
  tokenizer: TextTokenizer

  def sample(self, texts: List[str], *, max_new_tokens: int, temperature: float = 0.8, top_k: int = 0,
             top_p: float = 1.0, seed: int = 0) -> List[str]:
    prompts = [self.tokenizer.encode(t) or [self.tokenizer.eot_id] for t in texts]
    new = sampling.generate(self.cfg, self.params, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                            top_k=top_k, top_p=top_p, eot_id=self.tokenizer.eot_id, seed=seed)
    return [self.tokenizer.decode(ids) for ids in new]

  def score(self, texts: List[str]) -> List[dict]:
    token_lists = [[self.tokenizer.eot_id] + self.tokenizer.encode(t) for t in texts]
    rows = scoring.score(self.cfg, self.params, token_lists)
    # The leading end-of-text token is context only: report the text's own tokens.
    return [{"text": t, "tokens": r["tokens"][1:], "logprobs": r["logprobs"], "total": r["total"]}
            for t, r in zip(texts, rows)]

  def attention(self, text: str) -> Tuple[List[str], np.ndarray]:
    """The pieces of [end-of-text] + `text` and every layer's attention weights over them [n_layers, H, T, T]."""
    ids = [self.tokenizer.eot_id] + self.tokenizer.encode(text)
    if len(ids) > self.cfg.n_ctx:
      raise ValueError(f"{len(ids)} tokens exceed the model's n_ctx={self.cfg.n_ctx}; use a shorter text")
    pieces = ["<eot>"] + [self.tokenizer.decode([i]) for i in ids[1:]]
    return pieces, attention_maps.attention_weights(self.cfg, self.params, [ids])[:, 0]


def load(workdir: str, tokenizer_path: Optional[str] = None) -> Session:
  """The model of `workdir` with its tokenizer (or the one at `tokenizer_path`)."""
  loaded = workdir_lib.load_model(workdir)
  path = tokenizer_path or loaded.tokenizer_path
  if not path:
    raise FileNotFoundError(f"{workdir!r} records no tokenizer (token-file training, or an import without "
                            f"tokenizer files); pass a tokenizer path")
  return Session(cfg=loaded.cfg, params=jax.device_put(loaded.params), tokenizer=load_tokenizer(path))
