r"""An lm-evaluation-harness model for gpt3_jax workdirs (a training run, a fine-tune or a Hugging Face import).

  python -m gpt3_jax.evaluation.harness --workdir=W --tasks=hellaswag,lambada_openai --num_fewshot=0 \
      [--include_path=DIR] [--limit=N] [--output=results.json]

or in Python: `lm_eval.simple_evaluate(model=harness.GPT3JaxLM(workdir), tasks=[...])`. lm-evaluation-harness
0.4 finds models only by registration in the running process (no entry points), so its own `lm-eval` command
cannot name this one; importing this module registers it as "gpt3_jax" (model_args "workdir=W,batch_size=16").

Requests are tokenized as the harness's own Hugging Face model does: a context's trailing whitespace moves to the
continuation, the continuation's tokens are those of context + continuation after the context's, and an empty
context is the end-of-text token. So the numbers equal `--model hf` on the same weights (tested).
"""

from __future__ import annotations

from typing import List, Optional, Tuple  # noqa: F401

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from gpt3_jax import workdir as workdir_lib
from gpt3_jax.evaluation.likelihood import Scorer, encode_pair, rolling_windows


@register_model("gpt3_jax")
class GPT3JaxLM(LM):
  """loglikelihood, loglikelihood_rolling and generate_until (greedy) over one gpt3_jax model."""

  def __init__(self, workdir: str, batch_size: int = 16, max_gen_toks: int = 256):
    super().__init__()
    loaded = workdir_lib.load_model(workdir)
    self.cfg, self.params, self.tok = loaded.cfg, loaded.params, loaded.tokenizer()
    self.max_gen_toks = int(max_gen_toks)
    self.scorer = Scorer(self.cfg, self.params, batch_size=int(batch_size))

  def loglikelihood(self, requests, disable_tqdm: bool = False) -> List[Tuple[float, bool]]:
    pairs = [encode_pair(self.tok, *r.args, prefix_eot=False) for r in requests]
    return self.scorer.loglikelihoods(pairs)

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> List[float]:
    """The whole text after an end-of-text token, in windows of n_ctx predictions (`rolling_windows`)."""
    pairs, owner = [], []
    for i, r in enumerate(requests):
      windows = rolling_windows([self.tok.eot_id] + self.tok.encode(r.args[0]), self.cfg.n_ctx)
      pairs += windows
      owner += [i] * len(windows)
    totals = [0.0] * len(requests)
    for i, (ll, _) in zip(owner, self.scorer.loglikelihoods(pairs)):
      totals[i] += ll
    return totals

  def generate_until(self, requests, disable_tqdm: bool = False) -> List[str]:
    """Greedy continuations through the KV-cache sampler, batched by request settings: each stops at end-of-text,
    at `max_gen_toks` (default: the model's max_gen_toks) or at the first `until` string, which is cut off. As the
    harness's Hugging Face model does, the context is not prefixed with end-of-text and keeps its last
    n_ctx - max_gen_toks tokens."""
    from gpt3_jax.inference import sampling
    out: List[Optional[str]] = [None] * len(requests)
    groups: dict = {}
    for i, r in enumerate(requests):
      context, kwargs = r.args
      until = kwargs.get("until") or []
      until = (until,) if isinstance(until, str) else tuple(until)
      budget = max(1, min(int(kwargs.get("max_gen_toks", self.max_gen_toks)), self.cfg.n_ctx - 1))
      groups.setdefault((until, budget), []).append((i, (self.tok.encode(context) or [self.tok.eot_id])
                                                    [-(self.cfg.n_ctx - budget):]))
    for (until, budget), items in groups.items():
      for start in range(0, len(items), self.scorer.batch_size):
        chunk = items[start:start + self.scorer.batch_size]
        new = sampling.generate(self.cfg, self.params, [ids for _, ids in chunk], max_new_tokens=budget,
                                temperature=0.0, eot_id=self.tok.eot_id)
        for (i, _), tokens in zip(chunk, new):
          text = self.tok.decode(tokens)
          for stop in until:
            text = text.split(stop)[0]
          out[i] = text
    return out  # type: ignore[return-value]


def main(argv: Optional[list] = None) -> None:
  del argv
  import json
  import lm_eval
  from lm_eval.tasks import TaskManager
  manager = TaskManager(include_path=FLAGS.include_path) if FLAGS.include_path else TaskManager()
  results = lm_eval.simple_evaluate(model=GPT3JaxLM(FLAGS.workdir, batch_size=FLAGS.batch_size),
                                    tasks=list(FLAGS.tasks), num_fewshot=FLAGS.num_fewshot, limit=FLAGS.limit,
                                    task_manager=manager, random_seed=FLAGS.seed, fewshot_random_seed=FLAGS.seed)
  for task, metrics in results["results"].items():
    print(task, json.dumps({k: v for k, v in metrics.items() if isinstance(v, (int, float))}))
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump({"results": results["results"], "configs": results.get("configs", {})}, f, indent=2, default=str)


if __name__ == "__main__":
  from absl import app, flags
  from gpt3_jax import errors
  flags.DEFINE_string("workdir", None, "gpt3_jax workdir: a training run or a Hugging Face import.", required=True)
  flags.DEFINE_list("tasks", [], "lm-evaluation-harness task names.")
  flags.DEFINE_integer("num_fewshot", None, "K for every task (default: each task's own).")
  flags.DEFINE_string("include_path", None, "Directory of extra task YAMLs (offline tasks on local files).")
  flags.DEFINE_integer("limit", None, "At most this many examples per task.")
  flags.DEFINE_integer("batch_size", 16, "Requests per forward pass.")
  flags.DEFINE_integer("seed", 0, "The harness's random and few-shot seeds.")
  flags.DEFINE_string("output", None, "Write the results JSON here.")
  FLAGS = flags.FLAGS
  app.run(errors.one_line_errors(main))
