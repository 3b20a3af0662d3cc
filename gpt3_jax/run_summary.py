"""What every training run prints at the end: validation loss next to the unigram baseline (a classifier: accuracy
and macro-F1 next to the label prior), the task results and a sample."""

from __future__ import annotations

import math

import jax

from gpt3_jax.training.run_result import RunResult


def _sample(result: RunResult, train_cfg) -> str:
  from gpt3_jax.inference import sampling
  tokenizer = result.tokenizer
  prompt_ids = tokenizer.encode(train_cfg.sample_prompt) if train_cfg.sample_prompt else [tokenizer.eot_id]
  new = sampling.generate(result.model_config, result.state.params, [prompt_ids],
                          max_new_tokens=train_cfg.sample_tokens, temperature=train_cfg.sample_temperature,
                          top_k=train_cfg.sample_top_k, top_p=train_cfg.sample_top_p, eot_id=tokenizer.eot_id,
                          seed=train_cfg.seed)[0]
  return tokenizer.decode(new)


def _sampling_settings(train_cfg) -> str:
  parts = [f"temperature {train_cfg.sample_temperature}"]
  if train_cfg.sample_top_k:
    parts.append(f"top_k {train_cfg.sample_top_k}")
  if train_cfg.sample_top_p < 1.0:
    parts.append(f"top_p {train_cfg.sample_top_p}")
  return ", ".join(parts)


def _print_language_model(result: RunResult) -> None:
  loss, unigram = result.eval_loss, result.unigram_loss
  print(f"step {result.step}: validation loss {loss:.3f} nats/token (perplexity {math.exp(min(loss, 50)):.1f})")
  for key, value in sorted(result.eval_metrics.items()):
    if key != "loss":
      print(f"  {key.removesuffix('/loss')}: {value:.3f} nats/token")
  print(f"unigram baseline on the same split: {unigram:.3f} nats/token (perplexity {math.exp(unigram):.1f})")
  gap = unigram - loss
  print(f"the model is {abs(gap):.3f} nats/token {'below' if gap >= 0 else 'ABOVE'} the unigram baseline")


def _print_classifier(result: RunResult) -> None:
  m, prior = result.eval_metrics, result.unigram_loss
  print(f"step {result.step}: validation loss {m['loss']:.3f} nats/example, accuracy {m['accuracy']:.3f}, "
        f"macro-F1 {m['macro_f1']:.3f} over {int(m['examples'])} examples of {len(result.model_config.class_labels)} "
        f"classes")
  print(f"label-prior baseline on the same split: {prior:.3f} nats/example; the model is {abs(prior - m['loss']):.3f} "
        f"{'below' if m['loss'] <= prior else 'ABOVE'} it")


def print_summary(result: RunResult, train_cfg) -> None:
  if result.preempted:
    if jax.process_index() == 0:
      print(f"preempted at step {result.step}: checkpoint saved; run the same command again to resume")
    return
  sampled = train_cfg.sample_tokens > 0 and result.tokenizer is not None
  completion = _sample(result, train_cfg) if sampled else ""  # every process: sampling runs on the global mesh
  if jax.process_index() != 0:
    return
  print("=" * 72)
  if result.model_config.class_labels:
    _print_classifier(result)
  else:
    _print_language_model(result)
  for task, by_k in result.task_results.items():
    for k, r in by_k.items():
      chance = f" (chance {r['chance']:.3f})" if r.get("chance") else ""
      fitted = f", {r['k_used_mean']:.1f} demonstrations fitted on average" if int(k) > 0 else ""
      print(f"{task} {k}-shot: {r['metric']} {r['value']:.3f} +- {r['stderr']:.3f} over {r['n']} examples{chance}"
            f"{fitted}")
  if result.best:
    b = result.best
    print(f"best {b['metric']} {b['value']:.4f} at step {b['step']}: parameters kept in <workdir>/best")
  if sampled:
    print(f"--- sample ({_sampling_settings(train_cfg)}) ---")
    print(f"{train_cfg.sample_prompt}{completion}")
  elif train_cfg.sample_tokens > 0:
    print("--- no sample: this run has no tokenizer (token-file data); set DataConfig.tokenizer_path to decode ---")
  print("=" * 72)
