"""--mode=sample: continue each text with the model of --workdir (a training run or a Hugging Face import)."""

from __future__ import annotations

from typing import List


def run(workdir: str, texts: List[str], *, max_new_tokens: int, temperature: float, top_k: int, top_p: float,
        seed: int) -> None:
  from gpt3_jax.inference import session
  model = session.load(workdir)
  completions = model.sample(texts, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                             top_p=top_p, seed=seed)
  for text, completion in zip(texts, completions):
    print(f"=== prompt: {text!r}\n{text}{completion}")
