"""A trained model ready to sample from or score: params, config and tokenizer loaded from a workdir.

Reads the newest checkpoint a training run wrote (workdir/checkpoints, with the tokenizer path in its
metadata), or a Hugging Face import written by `python -m gpt3_jax.convert` (which has no SentencePiece
tokenizer: pass `tokenizer_path`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import List, Optional

import jax
import orbax.checkpoint as ocp

from gpt3_jax.data.tokenizer import Tokenizer
from gpt3_jax.inference import sampling, scoring
from gpt3_jax.model.config import ModelConfig


@dataclasses.dataclass
class Session:
  cfg: ModelConfig
  params: dict
  tokenizer: Tokenizer

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


def restore_training_params(ckpt_dir: str):
  manager = ocp.CheckpointManager(ckpt_dir, item_names=("state", "data", "meta"))
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"{ckpt_dir} holds no complete checkpoint; train first or pass another --workdir")
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  cfg = ModelConfig(**meta["model_config"])
  # Read only the params of the state: restore the whole tree as stored, then drop the optimizer state.
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  manager.close()
  state = restored.state
  params = state["params"] if isinstance(state, dict) else state.params
  return cfg, params, meta.get("tokenizer_path")


def load(workdir: str, tokenizer_path: Optional[str] = None) -> Session:
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if os.path.isdir(ckpt_dir):
    cfg, params, saved_tokenizer = restore_training_params(ckpt_dir)
  else:
    from gpt3_jax import convert
    if not os.path.exists(os.path.join(workdir, convert.CONFIG_NAME)):
      raise FileNotFoundError(f"{workdir!r} has neither training checkpoints nor a Hugging Face import; "
                              f"pass the --workdir of a training run or of `python -m gpt3_jax.convert`")
    cfg, params = convert.load_workdir(workdir)
    saved_tokenizer = None
  tokenizer_path = tokenizer_path or saved_tokenizer
  if not tokenizer_path or not os.path.exists(tokenizer_path):
    raise FileNotFoundError(f"no SentencePiece tokenizer for {workdir!r} (looked for {tokenizer_path!r}); "
                            f"train in this workdir first or pass the tokenizer's path")
  return Session(cfg=cfg, params=jax.device_put(params), tokenizer=Tokenizer.load(tokenizer_path))
