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


def _task_dir(root):
  os.makedirs(root, exist_ok=True)
  for name, rows in (("mc", QUESTIONS), ("text", TEXTS)):
    with open(os.path.join(root, f"{name}.jsonl"), "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
  with open(os.path.join(root, "tiny_mc.yaml"), "w") as f:
    f.write(f"""task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {os.path.join(root, 'mc.jsonl')}
validation_split: validation
output_type: multiple_choice
doc_to_text: question
doc_to_choice: choices
target_delimiter: ""
doc_to_target: gold
metric_list:
  - metric: acc
  - metric: acc_norm
""")
  with open(os.path.join(root, "tiny_text.yaml"), "w") as f:
    f.write(f"""task: tiny_text
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {os.path.join(root, 'text.jsonl')}
validation_split: validation
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: text
metric_list:
  - metric: word_perplexity
  - metric: bits_per_byte
""")
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
  generated = adapter.generate_until([Request(("def f(x):", {"until": ["\n"], "max_gen_toks": 5}))])
  assert isinstance(generated[0], str) and "\n" not in generated[0]
