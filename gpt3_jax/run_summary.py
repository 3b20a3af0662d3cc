"""What every training run prints at the end: validation loss next to the unigram baseline, and a sample."""

from __future__ import annotations

import math
from typing import Any, Dict

import jax


def print_summary(summary: Dict[str, Any], train_cfg) -> None:
  from gpt3_jax.inference import sampling
  if summary.get("preempted"):
    if jax.process_index() == 0:
      print(f"preempted at step {summary['step']}: checkpoint saved; run the same command again to resume")
    return
  cfg, tokenizer = summary["model_config"], summary["tokenizer"]
  completion = ""
  if train_cfg.sample_tokens > 0:
    prompt_ids = tokenizer.encode(train_cfg.sample_prompt) if train_cfg.sample_prompt else [tokenizer.eot_id]
    new = sampling.generate(cfg, summary["state"].params, [prompt_ids], max_new_tokens=train_cfg.sample_tokens,
                            temperature=train_cfg.sample_temperature, eot_id=tokenizer.eot_id,
                            seed=train_cfg.seed)[0]
    completion = tokenizer.decode(new)
  if jax.process_index() != 0:
    return
  loss, unigram = summary["eval_loss"], summary["unigram_loss"]
  print("=" * 72)
  print(f"step {summary['step']}: validation loss {loss:.3f} nats/token (perplexity {math.exp(loss):.1f})")
  print(f"unigram baseline on the same split: {unigram:.3f} nats/token (perplexity {math.exp(unigram):.1f})")
  print(f"the model is {unigram - loss:.3f} nats/token below the unigram baseline")
  if train_cfg.sample_tokens > 0:
    print(f"--- sample (temperature {train_cfg.sample_temperature}) ---")
    print(f"{train_cfg.sample_prompt}{completion}")
  print("=" * 72)
