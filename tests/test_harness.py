"""The lm-evaluation-harness adapter against the harness's own Hugging Face model on the same weights: a
multiple-choice task and a rolling-perplexity task on local files (offline task YAMLs), per request."""

import json
import os

import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")
pytest.importorskip("torch")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import hf_fixtures  # noqa: E402

QUESTIONS = [{"question": f"Question: what follows {w}?\nAnswer:", "choices": [" one", " two words", " three"],
              "gold": i % 3} for i, w in enumerate(["zero", "def", "class", "import", "return", "yield"])]
TEXTS = [{"text": "def f(x):\n    return x + 1\n"}, {"text": "import json\n" * 10}]


def _yaml(root, task, data, output_type, fields, metrics):
  """An offline lm-eval task on a local JSONL file."""
  with open(os.path.join(root, f"{task}.yaml"), "w") as f:
    f.write(f"task: {task}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    validation: "
            f"{os.path.join(root, data)}\nvalidation_split: validation\noutput_type: {output_type}\n{fields}\n"
            "metric_list:\n" + "".join(f"  - metric: {m}\n" for m in metrics))


def _task_dir(root):
  os.makedirs(root, exist_ok=True)
  for name, rows in (("mc", QUESTIONS), ("text", TEXTS)):
    with open(os.path.join(root, f"{name}.jsonl"), "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
  _yaml(root, "tiny_mc", "mc.jsonl", "multiple_choice", 'doc_to_text: question\ndoc_to_choice: choices\n'
        'target_delimiter: ""\ndoc_to_target: gold', ["acc", "acc_norm"])
  _yaml(root, "tiny_text", "text.jsonl", "loglikelihood_rolling", 'doc_to_text: ""\ndoc_to_target: text',
        ["word_perplexity", "bits_per_byte"])
  return root


@pytest.mark.slow
def test_adapter_matches_the_harness_hf_model(tmp_path):
  from lm_eval.tasks import TaskManager
  from gpt3_jax import convert
  from gpt3_jax.evaluation import harness
  hf_dir = hf_fixtures.make_hf_gpt2_dir(str(tmp_path / "hf"), hf_fixtures.stdlib_texts(), n_positions=64)
  convert.import_hf(hf_dir, str(tmp_path / "imported"))
  manager = TaskManager(include_path=_task_dir(str(tmp_path / "tasks")))
  kwargs = dict(tasks=["tiny_mc", "tiny_text"], num_fewshot=0, task_manager=manager, log_samples=True)
  ours = lm_eval.simple_evaluate(model=harness.GPT3JaxLM(str(tmp_path / "imported")), **kwargs)
  from lm_eval.models.huggingface import HFLM
  theirs = lm_eval.simple_evaluate(model=HFLM(pretrained=hf_dir, dtype="float32", device="cpu", batch_size=4),
                                   **kwargs)
  for task in ("tiny_mc", "tiny_text"):
    a = [s["resps"] for s in ours["samples"][task]]
    b = [s["resps"] for s in theirs["samples"][task]]
    flat = lambda r: np.array([x[0] if isinstance(x, (list, tuple)) else x for rr in r for x in rr], float)
    np.testing.assert_allclose(flat(a), flat(b), atol=1e-4)
  for metric in ("acc,none", "acc_norm,none"):
    assert ours["results"]["tiny_mc"][metric] == theirs["results"]["tiny_mc"][metric]
  assert ours["results"]["tiny_text"]["bits_per_byte,none"] == pytest.approx(
      theirs["results"]["tiny_text"]["bits_per_byte,none"], rel=1e-5)


def test_our_scorer_and_the_adapter_agree(tmp_path):
  """--mode=eval's scorer (without its end-of-text prefix) and the harness adapter score requests alike."""
  import collections
  from gpt3_jax import convert, workdir as workdir_lib
  from gpt3_jax.evaluation import harness, runner
  hf_dir = hf_fixtures.make_hf_gpt2_dir(str(tmp_path / "hf"), hf_fixtures.stdlib_texts(), n_positions=64)
  convert.import_hf(hf_dir, str(tmp_path / "imported"))
  adapter = harness.GPT3JaxLM(str(tmp_path / "imported"))
  loaded = workdir_lib.load_model(str(tmp_path / "imported"))
  ours = runner.Evaluator(loaded.cfg, loaded.params, loaded.tokenizer(), prefix_eot=False)
  pairs = [("", " json"), ("import ", "json"), ("retur", "n x"), ("Question: what?\nAnswer:", " two words"),
           ("x" * 200, " y")]  # the last: a context longer than the window, cut from the left
  Request = collections.namedtuple("Request", "args")
  theirs = adapter.loglikelihood([Request(p) for p in pairs])
  mine = ours._score(pairs)
  np.testing.assert_allclose([s for s, _, _ in mine], [s for s, _ in theirs], atol=1e-6)


def test_generate_until_matches_the_harness_hf_model(tmp_path):
  """Greedy generation, `until` and `max_gen_toks` as the harness's own Hugging Face model does them (batched
  requests of two settings, one with a context longer than the window)."""
  from lm_eval.models.huggingface import HFLM
  from gpt3_jax import convert
  from gpt3_jax.evaluation import harness
  hf_dir = hf_fixtures.make_hf_gpt2_dir(str(tmp_path / "hf"), hf_fixtures.stdlib_texts(), n_positions=64)
  convert.import_hf(hf_dir, str(tmp_path / "imported"))

  class Request:  # the harness's Instance as its models read it
    def __init__(self, args):
      self.args = args

  settings = [{"until": ["\n"], "max_gen_toks": 12}, {"until": [")", "import"], "max_gen_toks": 20}]
  contexts = ["def f(x):", "import json\n", "class A:\n    def", "x = (", "return " * 40]
  requests = [Request((c, dict(s))) for s in settings for c in contexts]
  ours = harness.GPT3JaxLM(str(tmp_path / "imported"), batch_size=3).generate_until(requests)
  theirs = HFLM(pretrained=hf_dir, dtype="float32", device="cpu", batch_size=4).generate_until(
      [Request((c, dict(s))) for s in settings for c in contexts])
  assert ours == theirs
  assert any(len(text) > 3 for text in ours)  # something was generated, not only stop strings
