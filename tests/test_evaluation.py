"""Evaluation like the paper: the readers on tiny files in each distributed format, the few-shot protocol, and
the scores against transformers' own GPT-2 (the same random weights, converted); `--mode=eval` end to end."""

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_fixtures  # noqa: E402
from text_fixtures import CharTokenizer, write_jsonl  # noqa: E402
from gpt3_jax import workdir as workdir_lib  # noqa: E402
from gpt3_jax.evaluation import embedded, fewshot, readers, runner  # noqa: E402
from gpt3_jax.evaluation.likelihood import loglikelihoods  # noqa: E402
from gpt3_jax.evaluation.tasks import Example, Task  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATOL = 1e-4


def write_task_dir(root):
  """One or two examples of each standard task, in the files' exact distributed formats."""
  hs = {"ind": 1, "activity_label": "Baking cookies", "ctx_a": "A man mixes flour and sugar.",
        "ctx_b": "then he", "ctx": "...", "endings": ["puts the dough in the oven [title] Done.", "eats the bowl.",
                                                     "sings loudly.", "flies away."], "label": 0, "split": "val"}
  write_jsonl(f"{root}/hellaswag/hellaswag_train.jsonl", [dict(hs, label=1)])
  write_jsonl(f"{root}/hellaswag/hellaswag_val.jsonl", [hs, dict(hs, label=2)])
  write_jsonl(f"{root}/lambada/lambada_test.jsonl", [{"text": "He opened the door and saw his old friend Tom"},
                                                {"text": "She drank a cup of hot tea"}])
  arc = {"id": "q1", "question": {"stem": "Which is a liquid?", "choices": [
      {"text": "ice", "label": "A"}, {"text": "water", "label": "B"}, {"text": "rock", "label": "C"}]},
         "answerKey": "B"}
  for split in ("Train", "Test"):
    write_jsonl(f"{root}/arc_easy/ARC-Easy-{split}.jsonl", [arc, dict(arc, answerKey="C")])
  for split in ("train", "valid"):
    write_jsonl(f"{root}/piqa/{split}.jsonl", [{"goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat the jar"}])
    with open(f"{root}/piqa/{split}-labels.lst", "w") as f:
      f.write("0\n")
  wino = {"sentence": "The trophy did not fit in the suitcase because _ was too big.", "option1": "the trophy",
          "option2": "the suitcase", "answer": "1"}
  write_jsonl(f"{root}/winogrande/train_xl.jsonl", [wino])
  write_jsonl(f"{root}/winogrande/dev.jsonl", [wino, dict(wino, answer="2")])
  copa = {"premise": "The man broke his toe.", "choice1": "He dropped a hammer on his foot.",
          "choice2": "He got a hole in his sock.", "question": "cause", "label": 0, "idx": 0}
  for split in ("train", "val"):
    write_jsonl(f"{root}/copa/{split}.jsonl", [copa])
  os.makedirs(f"{root}/storycloze", exist_ok=True)
  header = ["InputStoryid", "InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4",
            "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2", "AnswerRightEnding"]
  for split in ("val", "test"):
    with open(f"{root}/storycloze/cloze_test_{split}__spring2016.csv", "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(header)
      w.writerow(["s1", "Ann was hungry.", "She went home.", "She opened the fridge.", "It was empty.",
                  "She ordered pizza.", "She was full.", "1"])
  write_jsonl(f"{root}/mytask.jsonl", [{"context": "2 + 2 =", "choices": [" 4", " 5"], "gold": 0, "split": "train"},
                                  {"context": "3 + 3 =", "choices": [" 7", " 6"], "gold": 1}])
  return root


def test_readers_take_each_format_as_distributed(tmp_path):
  root = write_task_dir(str(tmp_path))
  hs = readers.standard_task("hellaswag", root)
  assert hs.examples[0].context == "Baking cookies: A man mixes flour and sugar. Then he"
  assert hs.examples[0].choices[0] == " puts the dough in the oven. Done." and hs.examples[1].gold == 2
  lam = readers.standard_task("lambada", root)
  assert lam.examples[0].context == "He opened the door and saw his old friend" and lam.examples[0].target == " Tom"
  arc = readers.standard_task("arc_easy", root)
  assert arc.examples[0].context == "Question: Which is a liquid?\nAnswer:" and arc.examples[0].gold == 1
  assert arc.examples[1].gold == 2 and arc.unconditional_prompt == "Answer:" and arc.eval_split == "test"
  assert readers.standard_task("piqa", root).examples[0].choices == [" twist the lid", " eat the jar"]
  wino = readers.standard_task("winogrande", root)
  assert wino.partial and wino.examples[0].choices[1] == "The trophy did not fit in the suitcase because the suitcase"
  assert wino.examples[0].target == " was too big." and wino.examples[1].gold == 1
  copa = readers.standard_task("copa", root).examples[0]
  assert copa.context == "The man broke his toe because" and copa.choices[0] == " he dropped a hammer on his foot."
  story = readers.standard_task("storycloze", root)
  assert story.examples[0].choices == [" She ordered pizza.", " She was full."] and story.fewshot_split == "validation"
  mine = readers.standard_task("mytask", root)
  assert mine.kind == "multiple_choice" and len(mine.demonstrations()) == 1 and mine.examples[0].gold == 1
  with pytest.raises(ValueError, match="unknown task 'nope'"):
    readers.standard_task("nope", root)
  with pytest.raises(FileNotFoundError, match="docs/evaluation.md"):
    readers.standard_task("hellaswag", str(tmp_path / "empty"))


def test_few_shot_draws_are_seeded_exclude_the_example_and_fit_the_context():
  pool = [Example(context=f"q{i}", choices=[" a", " b"], gold=0) for i in range(20)]
  task = Task("t", "multiple_choice", {"validation": pool}, fewshot_split="validation", separator="\n")
  first = fewshot.draw(task, 3, 5, seed=0)
  assert first == fewshot.draw(task, 3, 5, seed=0) and first != fewshot.draw(task, 3, 5, seed=1)
  assert len(first) == 5 and pool[3] not in first
  assert fewshot.prefix(task, first[:2]) == f"{first[0].context} a\n{first[1].context} a\n"
  count = lambda text: len(text.split())
  pre, used = fewshot.fit(task, first, "q3", " a", count, n_ctx=6)
  assert used == 2 and count(pre + "q3 a") <= 6  # dropped from the front until it fits
  lam = Task("lambada", "completion", {"test": [Example(context="the cat sat on the", target=" mat")]},
             eval_split="test", fewshot_split="test", cloze_fewshot=True)
  assert lam.demo_text(lam.examples[0]) == "the cat sat on the ____. -> mat"


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
  """A converted random GPT-2 (n_ctx 64) with its tokenizer, and transformers' model of the same weights."""
  root = tmp_path_factory.mktemp("eval_gpt2")
  hf_dir = hf_fixtures.make_hf_gpt2_dir(str(root / "hf"), hf_fixtures.stdlib_texts(), n_positions=64)
  from gpt3_jax import convert
  convert.import_hf(hf_dir, str(root / "imported"))
  loaded = workdir_lib.load_model(str(root / "imported"))
  model = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
  return loaded, model, str(root / "imported")


def _hf_loglik(model, context, continuation):
  ids = torch.tensor([(context + continuation)[-65:]])
  with torch.no_grad():
    logprobs = torch.log_softmax(model(ids[:, :-1]).logits[0], -1)
  n, targets = len(continuation), ids[0, 1:]
  picked = logprobs[torch.arange(len(targets)), targets][-n:]
  greedy = bool((logprobs.argmax(-1)[-n:] == targets[-n:]).all())
  return float(picked.sum()), greedy


def test_log_likelihoods_match_transformers(gpt2):
  loaded, model, _ = gpt2
  rng = np.random.default_rng(0)
  requests = [(rng.integers(0, 300, n).tolist(), rng.integers(0, 300, m).tolist())
              for n, m in ((1, 1), (5, 3), (30, 10), (80, 7), (3, 64))]  # (80, 7): context cut from the left
  ours = loglikelihoods(loaded.cfg, loaded.params, requests, batch_size=4)
  for (ll, greedy), (context, continuation) in zip(ours, requests):
    ref_ll, ref_greedy = _hf_loglik(model, context, continuation)
    assert ll == pytest.approx(ref_ll, abs=ATOL * len(continuation)) and greedy == ref_greedy
  # A greedy continuation is recognised as one.
  context = [1, 2, 3]
  with torch.no_grad():
    nxt = int(model(torch.tensor([context])).logits[0, -1].argmax())
  assert loglikelihoods(loaded.cfg, loaded.params, [(context, [nxt])])[0][1]


def test_multiple_choice_metrics_follow_the_scores(gpt2):
  loaded, model, _ = gpt2
  tok = loaded.tokenizer()
  examples = [Example(context=f"Question: what comes after {w}?\nAnswer:", choices=[" one", " a longer answer",
                                                                                   " two"], gold=i % 3)
              for i, w in enumerate(["zero", "one", "def", "class", "import"])]
  task = Task("mc", "multiple_choice", {"validation": examples}, unconditional_prompt="Answer:")
  result = runner.Evaluator(loaded.cfg, loaded.params, tok).evaluate(task, k=0)
  expected = {"acc": [], "acc_token": [], "acc_char": [], "acc_uncond": []}
  for ex in examples:
    ctx = [tok.eot_id] + tok.encode(ex.context)
    ll = np.array([_hf_loglik(model, ctx, tok.encode(c))[0] for c in ex.choices])
    uncond = np.array([_hf_loglik(model, [tok.eot_id] + tok.encode("Answer:"), tok.encode(c))[0]
                       for c in ex.choices])
    ntok = np.array([len(tok.encode(c)) for c in ex.choices])
    nchar = np.array([len(c) for c in ex.choices])
    for name, score in (("acc", ll), ("acc_token", ll / ntok), ("acc_char", ll / nchar), ("acc_uncond", ll - uncond)):
      expected[name].append(float(np.argmax(score) == ex.gold))
  for name, values in expected.items():
    assert result["metrics"][name]["value"] == pytest.approx(np.mean(values))
  assert result["metric"] == "acc_uncond" and result["n"] == 5
  p = result["metrics"]["acc"]["value"]
  assert result["metrics"]["acc"]["stderr"] == pytest.approx(math.sqrt(p * (1 - p) / 4) if 0 < p < 1 else 0.0)


def test_a_continuation_longer_than_the_window_is_a_counted_skip(gpt2):
  loaded, _, _ = gpt2
  tok = loaded.tokenizer()
  long = " x" * 80  # 80 tokens or more: more than n_ctx = 64 can score whole
  examples = [Example(context="a", choices=[" b", " c"], gold=0), Example(context="a", choices=[" b", long], gold=1),
              Example(context="d", choices=[" e", " f"], gold=1)]
  task = Task("mc", "multiple_choice", {"validation": examples})
  result = runner.Evaluator(loaded.cfg, loaded.params, tok).evaluate(task, k=0)
  alone = runner.Evaluator(loaded.cfg, loaded.params, tok).evaluate(
      Task("mc", "multiple_choice", {"validation": examples[::2]}), k=0)
  assert (result["n"], result["skipped"]) == (2, 1) and result["metrics"] == alone["metrics"]
  completion = Task("c", "completion", {"validation": [Example(context="a", target=long)]})
  with pytest.raises(ValueError, match="longer than the model's n_ctx=64"):
    runner.Evaluator(loaded.cfg, loaded.params, tok).evaluate(completion, k=0)


def test_perplexity_in_nats_per_token_and_bits_per_byte(gpt2):
  loaded, model, _ = gpt2
  tok = loaded.tokenizer()
  texts = ["def f(x):\n    return x\n", "import json\n" * 12]  # the second spans two windows of n_ctx
  task = Task("ppl", "perplexity", {"validation": [Example(text=t) for t in texts]})
  result = runner.Evaluator(loaded.cfg, loaded.params, tok).evaluate(task, k=0)
  total, tokens = 0.0, 0
  for text in texts:
    ids = [tok.eot_id] + tok.encode(text)
    for start in range(1, len(ids), 64):  # windows of 64 predictions; the last takes earlier context
      continuation = ids[start:start + 64]
      total -= _hf_loglik(model, ids[max(0, start + len(continuation) - 65):start], continuation)[0]
    tokens += len(ids) - 1
  assert result["value"] == pytest.approx(total / tokens, abs=1e-4)
  nbytes = sum(len(t.encode()) for t in texts)
  assert result["metrics"]["bits_per_byte"]["value"] == pytest.approx(total / math.log(2) / nbytes, abs=1e-4)


def test_the_embedded_task_is_four_way_and_fixed():
  texts = [f"def f{i}():\n" + "".join(f"    value_{i}_{j} = compute({j})\n" for j in range(30)) for i in range(6)]
  task = embedded.embedded_task(texts)
  again = embedded.embedded_task(texts)
  assert task.examples == again.examples and len(task.examples) >= 10
  for ex in task.examples:
    assert len(ex.choices) == 4 and len(set(ex.choices)) == 4 and 0 <= ex.gold < 4
    true_line = ex.choices[ex.gold]
    assert any(f"{ex.context}{true_line}\n" in t for t in texts)  # the gold line really follows the context


def _main(*args):
  return subprocess.run([sys.executable, "-m", "gpt3_jax.main", *args], capture_output=True, text=True, timeout=300,
                        cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.mark.slow
def test_main_eval_writes_results_table_and_tensorboard(gpt2, tmp_path):
  _, _, workdir = gpt2
  task_dir = write_task_dir(str(tmp_path / "tasks"))
  out = _main("--mode=eval", f"--workdir={workdir}", "--tasks=arc_easy,winogrande,lambada,mytask",
              "--num_fewshot=0,1", f"--task_dir={task_dir}")
  assert out.returncode == 0, out.stderr[-3000:]
  document = json.load(open(os.path.join(workdir, "eval", "results_step0.json")))
  assert set(document["tasks"]) == {"arc_easy", "winogrande", "lambada", "mytask"}
  assert set(document["tasks"]["arc_easy"]) == {"0", "1"} and document["tasks"]["mytask"]["1"]["k_used_mean"] == 1
  assert document["tasks"]["lambada"]["0"]["metric"] == "acc" and document["num_fewshot"] == [0, 1]
  assert "arc_easy" in out.stdout and "acc_uncond" in out.stdout
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  bad = _main("--mode=eval", f"--workdir={workdir}", "--tasks=hellaswag", f"--task_dir={tmp_path / 'none'}")
  assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "Traceback" not in bad.stderr and "docs/evaluation.md" in bad.stderr


def test_tasks_during_training_score_the_final_parameters(tiny_text_dir, tiny_data_dir, tmp_path):
  """TrainConfig.task_eval_tasks: the hook's results equal --mode=eval's scorer on the saved checkpoint."""
  import tiny_configs as tc
  from gpt3_jax.training import trainer
  task_dir = write_task_dir(str(tmp_path / "tasks"))
  cfg = tc.train(train_steps=2, task_eval_tasks=("mytask", "copa"), task_eval_fewshot=(0, 1), task_eval_dir=task_dir)
  result = trainer.train(tc.MODEL, tc.data(tiny_text_dir, tiny_data_dir), tc.OPTIMIZER, tc.MESH, cfg,
                         str(tmp_path / "run"))
  assert set(result.task_results) == {"mytask", "copa"} and set(result.task_results["mytask"]) == {"0", "1"}
  loaded = workdir_lib.load_model(str(tmp_path / "run"))
  tasks = readers.standard_task("mytask", task_dir), readers.standard_task("copa", task_dir)
  again = runner.evaluate_all(runner.Evaluator(loaded.cfg, loaded.params, loaded.tokenizer()), tasks, (0, 1))
  for task, by_k in again.items():
    for k, r in by_k.items():
      for metric, value in r["metrics"].items():
        assert result.task_results[task][k]["metrics"][metric]["value"] == pytest.approx(value["value"])
  rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  assert any(r["split"] == "fewshot" and "copa/1shot/acc" in r for r in rows)
  with pytest.raises(ValueError, match="unknown task 'nope'"):
    trainer.train(tc.MODEL, tc.data(tiny_text_dir, tiny_data_dir), tc.OPTIMIZER, tc.MESH,
                  tc.train(task_eval_tasks=("nope",), task_eval_dir=task_dir), str(tmp_path / "refused"))
  assert not os.path.exists(tmp_path / "refused" / "operative_config.gin")


def test_scores_do_not_depend_on_the_batch(gpt2):
  loaded, _, _ = gpt2
  rng = np.random.default_rng(1)
  requests = [(rng.integers(0, 300, int(n)).tolist(), rng.integers(0, 300, int(m)).tolist())
              for n, m in zip(rng.integers(1, 90, 11), rng.integers(1, 20, 11))]
  one = loglikelihoods(loaded.cfg, loaded.params, requests, batch_size=1)
  seven = loglikelihoods(loaded.cfg, loaded.params, requests, batch_size=7)
  np.testing.assert_allclose([s for s, _ in one], [s for s, _ in seven], atol=1e-5)
  assert [g for _, g in one] == [g for _, g in seven]


def test_context_and_continuation_split_like_the_harness(gpt2):
  from gpt3_jax.evaluation.likelihood import encode_pair
  tok = gpt2[0].tokenizer()
  assert encode_pair(tok, "", " json", prefix_eot=False) == ([tok.eot_id], tok.encode(" json"))
  # A trailing space belongs to the continuation; the split is that of the joint encoding.
  head, tail = encode_pair(tok, "import ", "json", prefix_eot=False)
  assert head == tok.encode("import") and head + tail == tok.encode("import json")
  assert encode_pair(tok, "import", " json", prefix_eot=True)[0] == [tok.eot_id] + tok.encode("import")
  for context, continuation in (("retur", "n x"), ("ab", "c"), ("x = 1", "0")):  # merges across the boundary
    head, tail = encode_pair(tok, context, continuation, prefix_eot=False)
    assert tail and tok.decode(head + tail) == context + continuation


def _unigram_model():
  """Hand-set weights: the final LayerNorm's scale is 0 and its bias picks column 0 of the tied embedding, so every
  position's logits are that column: log p(a) = -1 and log p(b) = -1.5 whatever the context."""
  import jax
  from gpt3_jax.model.config import ModelConfig
  from gpt3_jax.model.transformer import GPT, unboxed_params
  cfg = ModelConfig(vocab_size=16, n_ctx=16, d_model=8, n_layers=1, n_heads=2, d_head=4, local_window=4)
  params = jax.tree.map(np.array, unboxed_params(GPT(cfg).init(jax.random.key(0), np.zeros((1, 4), np.int32))))
  others = np.log((math.e - 1 - math.exp(-0.5)) / 14)  # the 14 other tokens share the rest: logsumexp = 1
  column = np.full(params["wte"].shape[0], others, np.float32)
  column[1], column[2] = 0.0, -0.5
  params["wte"][:] = 0.0
  params["wte"][:, 0] = column
  params["ln_f"]["scale"][:] = 0.0
  params["ln_f"]["bias"][:] = np.eye(8)[0]
  return cfg, params


def test_hand_set_weights_give_the_accuracy_they_imply():
  cfg, params = _unigram_model()
  ev = runner.Evaluator(cfg, params, CharTokenizer())
  picks = Task("picks", "multiple_choice", {"validation": [Example(context="c", choices=["a", "b"], gold=g)
                                                           for g in (0, 0, 0, 1)]})
  result = ev.evaluate(picks, k=0)
  assert [result["metrics"][m]["value"] for m in ("acc", "acc_token", "acc_char")] == [0.75, 0.75, 0.75]
  # "aa" scores -2 in total (-1 per token), "b" -1.5: the raw sum prefers "b", the per-token and per-character
  # normalizations prefer "aa".
  norm = Task("norm", "multiple_choice", {"validation": [Example(context="d", choices=["aa", "b"], gold=0)]})
  result = ev.evaluate(norm, k=0)
  assert [result["metrics"][m]["value"] for m in ("acc", "acc_token", "acc_char")] == [0.0, 1.0, 1.0]
  complete = Task("complete", "completion", {"validation": [Example(context="e", target=t) for t in "aab"]})
  result = ev.evaluate(complete, k=0)
  assert result["value"] == pytest.approx(2 / 3)
  assert result["metrics"]["ppl"]["value"] == pytest.approx(math.exp((1 + 1 + 1.5) / 3), rel=1e-5)
  text = Task("text", "perplexity", {"validation": [Example(text="ab")]})
  result = ev.evaluate(text, k=0)
  assert result["value"] == pytest.approx(1.25, rel=1e-5)
  assert result["metrics"]["bits_per_byte"]["value"] == pytest.approx(2.5 / math.log(2) / 2, rel=1e-5)
