"""Supervised fine-tuning: the loss mask worked by hand, bad examples, and a fine-tune of an imported GPT-2 that
learns, resumes bit-exactly and refuses a mismatched architecture."""

import collections
import json
import os

import jax
import numpy as np
import pytest

import tiny_configs as tc
from text_fixtures import CharTokenizer, keyword_sentences, write_jsonl
from gpt3_jax.finetune import examples as examples_lib
from gpt3_jax.finetune import sft_data
from gpt3_jax.finetune.config import FinetuneConfig
from gpt3_jax.model.config import ModelConfig
from gpt3_jax.model.transformer import GPT, unboxed_params
from gpt3_jax.training import train_step


def test_the_loss_counts_the_completion_and_its_end_of_text_only():
  row = sft_data.example_row(CharTokenizer(), "ab", "cd", seq_len=8)
  # [eot] a b | c d [eot] | pad pad: masked tokens are stored as -(id + 1).
  np.testing.assert_array_equal(row, [-1, -2, -3, 3, 4, 0, -1, -1])
  window = np.concatenate([row, sft_data.masked([0])]).astype(np.int32)[None]  # + the next row's masked [eot]
  cfg = ModelConfig(vocab_size=16, n_ctx=8, d_model=8, n_layers=1, n_heads=2, d_head=4)
  params = unboxed_params(GPT(cfg).init(jax.random.key(0), np.zeros((1, 8), np.int32))["params"])
  total, count = train_step.loss_fn(params, cfg, window)
  inputs = np.array([[0, 1, 2, 3, 4, 0, 0, 0]])
  logprobs = np.asarray(jax.nn.log_softmax(GPT(cfg).apply({"params": params}, inputs)[0, :, :16]))
  # Scored: position 2 predicts c (3), position 3 predicts d (4), position 4 the closing end-of-text (0).
  expected = -(logprobs[2, 3] + logprobs[3, 4] + logprobs[4, 0])
  assert float(count) == 3.0 and float(total) == pytest.approx(expected, rel=1e-6)
  assert sft_data.example_row(CharTokenizer(), "abc", "def", seq_len=7) is None  # 1 + 3 + 3 + 1 > 7
  assert sft_data.example_row(CharTokenizer(), "abc", "de", seq_len=7) is not None


def test_bad_examples_are_one_line_errors_or_counted_skips(tmp_path):
  path = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "a", "completion": "b"}, {"question": "a"},
                                            {"prompt": "a", "completion": " "},
                                            {"messages": [{"role": "user", "content": "hi"},
                                                          {"role": "assistant", "content": "hello"}]}])
  with pytest.raises(ValueError, match=r"train.jsonl:2: no 'prompt' and 'completion' fields"):
    examples_lib.read_examples(path, FinetuneConfig(train_path=path), collections.Counter())
  skipped = collections.Counter()
  examples = examples_lib.read_examples(path, FinetuneConfig(train_path=path, on_bad_example="skip"), skipped)
  assert dict(skipped) == {"missing_field": 1, "empty_completion": 1}
  assert examples == [("a", "b", f"{path}:1"), ("User: hi\nAssistant:", " hello", f"{path}:4")]
  with pytest.raises(ValueError, match="on_bad_example='drop' must be one of"):
    FinetuneConfig(on_bad_example="drop")


# --- end to end on an imported GPT-2 ---------------------------------------------------------------------------

WORDS = ["json", "email", "logging", "http", "unittest", "xml", "ast", "re", "os", "sys", "math", "time"]


@pytest.fixture(scope="module")
def base(imported_gpt2, tmp_path_factory):
  """An imported random GPT-2 (n_ctx 64) with its tokenizer, and a copy task: `copy: W =>` -> ` W W`."""
  root = tmp_path_factory.mktemp("finetune")
  rng = np.random.default_rng(0)
  rows = [{"prompt": f"copy: {w} =>", "completion": f" {w} {w}"} for w in rng.choice(WORDS, 96)]
  train = write_jsonl(root / "train.jsonl", rows[:80])
  valid = write_jsonl(root / "valid.jsonl", rows[80:])
  return imported_gpt2, train, valid


def _finetune(base, train, valid, workdir, steps, decay_steps=40, peak=3e-3, **changes):
  from gpt3_jax import workdir as workdir_lib
  from gpt3_jax.finetune.sft_data import SFTData
  from gpt3_jax.training import trainer
  from gpt3_jax.training.optimizer import OptimizerConfig
  loaded = workdir_lib.load_model(base)
  data = SFTData(FinetuneConfig(train_path=train, validation_path=valid, **changes), loaded.tokenizer_path,
                 loaded.cfg.vocab_size)
  opt = OptimizerConfig(peak_learning_rate=peak, warmup_tokens=256, decay_tokens=32 * 8 * decay_steps)
  cfg = tc.train(init_from=base, seq_len=32, train_steps=steps, eval_every=steps, checkpoint_every=4,
                 eval_batches=2)
  return trainer.train(loaded.cfg, data, opt, tc.MESH, cfg, str(workdir))


def test_a_fine_tune_learns_the_completions_and_resumes_bit_exactly(base, tmp_path):
  straight = _finetune(*base, tmp_path / "straight", 20)
  _finetune(*base, tmp_path / "resumed", 8)
  resumed = _finetune(*base, tmp_path / "resumed", 20)
  assert resumed.initialized_from == "resumed" and straight.initialized_from == base[0]
  for a, b in zip(jax.tree.leaves(straight.state.params), jax.tree.leaves(resumed.state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  rows = [json.loads(line) for line in open(tmp_path / "straight" / "metrics.jsonl")]
  train = [r for r in rows if r["split"] == "train"]
  assert 0.0 < train[0]["data/sft/padding_fraction"] < 1.0 and train[0]["data/sft/train_examples"] == 80
  assert straight.eval_loss < train[0]["loss"] - 1.0, (train[0]["loss"], straight.eval_loss)


def test_a_fine_tune_refuses_an_architecture_other_than_its_base(base, tmp_path):
  from gpt3_jax import configs
  from gpt3_jax.modes import finetune
  from gpt3_jax import workdir as workdir_lib
  bundle = configs.parse_and_build([], [f"TrainConfig.init_from = '{base[0]}'", "ModelConfig.d_model = 48",
                                        "ModelConfig.dtype = 'bfloat16'"])
  with pytest.raises(ValueError, match=r"ModelConfig.d_model=48 but the base model .* has 32; drop the binding"):
    finetune.model_config(workdir_lib.load_model(base[0]).cfg, bundle)
  bundle = configs.parse_and_build([], [f"TrainConfig.init_from = '{base[0]}'", "ModelConfig.dtype = 'bfloat16'"])
  assert finetune.model_config(workdir_lib.load_model(base[0]).cfg, bundle).dtype == "bfloat16"


def test_frozen_parameters_are_bitwise_unchanged_and_hold_no_optimizer_state(tiny_text_dir, tiny_data_dir, tmp_path):
  import dataclasses
  from gpt3_jax.training import trainer
  opt = dataclasses.replace(tc.OPTIMIZER, frozen=("wte", "layers/.*/ln_.*"))
  result = trainer.train(tc.MODEL, tc.data(tiny_text_dir, tiny_data_dir), opt, tc.MESH, tc.train(train_steps=3),
                         str(tmp_path / "frozen"))
  from gpt3_jax.parallel import mesh as mesh_lib
  from gpt3_jax.training.assembly import assemble
  asm = assemble(result.model_config, opt, mesh_lib.make_mesh(tc.MESH), seq_len=32)
  with asm.activate():
    fresh = asm.fresh_state(seed=tc.train().seed)
  from gpt3_jax.training.optimizer import param_name
  changed = {param_name(p): not np.array_equal(np.asarray(a), np.asarray(b)) for (p, a), b in
             zip(jax.tree_util.tree_leaves_with_path(result.state.params), jax.tree.leaves(fresh.params))}
  frozen = [n for n in changed if n == "wte" or "/ln_" in n]
  assert frozen and not any(changed[n] for n in frozen)
  assert all(changed[n] for n in changed if n not in frozen)  # the rest trained
  state_sizes = sum(x.size for x in jax.tree.leaves(result.state.opt_state))
  params = {param_name(p): x.size for p, x in jax.tree_util.tree_leaves_with_path(result.state.params)}
  trained = sum(v for k, v in params.items() if k not in frozen)
  assert state_sizes == 2 * trained + 1  # Adam's two moments of the trained parameters and its count
  with pytest.raises(ValueError, match="'wtf' matches no parameter"):
    trainer.train(tc.MODEL, tc.data(tiny_text_dir, tiny_data_dir), dataclasses.replace(tc.OPTIMIZER, frozen=("wtf",)),
                  tc.MESH, tc.train(train_steps=1), str(tmp_path / "bad"))


def test_lora_starts_at_the_base_trains_only_adapters_and_exports_merged(base, tmp_path):
  """A LoRA fine-tune of the imported GPT-2: step 0 gives the base's logits exactly; training changes only the
  adapters (the base is bitwise the same, and holds no optimizer state); the merged export equals the unmerged
  model's logits."""
  import dataclasses
  from gpt3_jax import convert, workdir as workdir_lib
  from gpt3_jax.model import lora
  from gpt3_jax.parallel import mesh as mesh_lib
  from gpt3_jax.training.assembly import assemble
  from gpt3_jax.training.optimizer import OptimizerConfig, param_name
  loaded = workdir_lib.load_model(base[0])
  cfg = dataclasses.replace(loaded.cfg, lora_rank=4, lora_alpha=8.0)
  tokens = np.arange(1, 33)[None] % loaded.cfg.vocab_size
  asm = assemble(cfg, OptimizerConfig(), mesh_lib.make_mesh(tc.MESH), seq_len=32)
  with asm.activate():
    start = asm.state_from_params(loaded.params)
  logits = lambda c, p: np.asarray(GPT(c).apply({"params": jax.tree.map(np.asarray, p)}, tokens))
  np.testing.assert_array_equal(logits(cfg, start.params), logits(loaded.cfg, loaded.params))

  from gpt3_jax.training import trainer
  data = sft_data.SFTData(FinetuneConfig(train_path=base[1], validation_path=base[2]), loaded.tokenizer_path,
                          loaded.cfg.vocab_size)
  opt = OptimizerConfig(peak_learning_rate=1e-2, warmup_tokens=256, decay_tokens=32 * 8 * 40)
  result = trainer.train(cfg, data, opt, tc.MESH, tc.train(init_from=base[0], seq_len=32, train_steps=6,
                                                           eval_every=6), str(tmp_path / "lora"))
  trained = {param_name(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(result.state.params)}
  before = {param_name(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(start.params)}
  adapters = [n for n in trained if "_lora_" in n]
  assert len(adapters) == 8 and all(not np.array_equal(trained[n], before[n]) for n in adapters if "lora_b" in n)
  assert all(np.array_equal(trained[n], before[n]) for n in trained if n not in adapters)
  moments = sum(x.size for x in jax.tree.leaves(result.state.opt_state)) - 1
  assert moments == 2 * sum(trained[n].size for n in adapters)
  merged_cfg, merged = lora.merge(cfg, result.state.params)
  assert merged_cfg.lora_rank == 0 and not any("_lora_" in param_name(p) for p, _ in
                                               jax.tree_util.tree_leaves_with_path(merged))
  unmerged = logits(cfg, result.state.params)[..., :cfg.vocab_size]
  np.testing.assert_allclose(logits(merged_cfg, merged)[..., :cfg.vocab_size], unmerged, atol=1e-4)
  assert not np.allclose(unmerged, logits(loaded.cfg, loaded.params)[..., :cfg.vocab_size], atol=1e-3)
  convert.export_hf(str(tmp_path / "lora"), str(tmp_path / "hf_out"))
  import torch
  import transformers
  hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf_out")).eval()
  with torch.no_grad():
    theirs = hf(torch.tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(theirs, unmerged, atol=1e-4)


@pytest.mark.slow
def test_a_killed_fine_tune_resumes_bit_exactly(base, tmp_path):
  """`--mode=finetune` in a subprocess, SIGKILLed twice and SIGTERMed once at random points (often inside an
  asynchronous checkpoint write): every logged loss equals the uninterrupted fine-tune's exactly."""
  import sys
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
  import fault_injection
  flags = ["--mode=finetune", f"--gin.TrainConfig.init_from='{base[0]}'",
           f"--gin.FinetuneConfig.train_path='{base[1]}'", f"--gin.FinetuneConfig.validation_path='{base[2]}'",
           "--gin.TrainConfig.seq_len=32", "--gin.TrainConfig.global_batch_size=4", "--gin.TrainConfig.train_steps=10",
           "--gin.TrainConfig.checkpoint_every=1", "--gin.TrainConfig.keep_checkpoints=3",
           "--gin.TrainConfig.log_every=1", "--gin.TrainConfig.eval_every=10", "--gin.TrainConfig.eval_batches=1",
           "--gin.TrainConfig.sample_tokens=0", "--gin.TrainConfig.peak_flops_per_device=1e11",
           "--gin.OptimizerConfig.peak_learning_rate=3e-3", "--gin.OptimizerConfig.warmup_tokens=256",
           "--gin.OptimizerConfig.decay_tokens=4096"]
  with open(tmp_path / "log.txt", "w") as log:
    reference = fault_injection.run_uninterrupted(flags, str(tmp_path / "a"), log)
    result = fault_injection.run_with_faults(flags, str(tmp_path / "b"), steps=10, kills=3, log=log, seed=2,
                                             damage=False)
  assert result["faults"] == 3 and sorted(reference) == list(range(1, 11))
  assert fault_injection.compare(reference, fault_injection.logged_losses(str(tmp_path / "b"))) == 0.0
  losses = [reference[s] for s in sorted(reference)]
  assert losses[0] - min(losses) > 0.5  # it trains: a lost or repeated update would change the losses


def test_a_synthetic_classification_goes_from_chance_to_95_percent(base, tmp_path):
  """Classification by verbalized labels (no new parameters): fine-tune on `... => yes|no` where the label is
  which keyword set the sentence holds, then score both labels on held-out sentences (new filler combinations)
  with the evaluation's multiple-choice scorer: from about chance to at least 95%."""
  from gpt3_jax import workdir as workdir_lib
  from gpt3_jax.evaluation import runner
  from gpt3_jax.evaluation.tasks import Example, Task
  train, held_out = ([(text + " =>", label) for text, label in split] for split in keyword_sentences((" yes", " no")))
  path = write_jsonl(tmp_path / "train.jsonl", [{"prompt": p, "completion": c} for p, c in train])
  task = Task("keywords", "multiple_choice", {"validation": [Example(context=p, choices=[" yes", " no"],
                                                                     gold=[" yes", " no"].index(c))
                                                             for p, c in held_out]})
  loaded = workdir_lib.load_model(base[0])
  before = runner.Evaluator(loaded.cfg, loaded.params, loaded.tokenizer()).evaluate(task, k=0)["metrics"]["acc"]
  result = _finetune(base[0], path, base[2], tmp_path / "cls", 300, decay_steps=300, peak=1e-2)
  after = runner.Evaluator(result.model_config, result.state.params, loaded.tokenizer()).evaluate(task, k=0)
  assert abs(before["value"] - 0.5) < 0.2 and after["metrics"]["acc"]["value"] >= 0.95, (before, after["metrics"])


@pytest.mark.parametrize("pattern,scan", [("dense", True), ("alternating", True), ("alternating", False)])
def test_the_first_layers_freeze_bitwise_scanned_or_not(pattern, scan, tiny_text_dir, tiny_data_dir, tmp_path):
  """OptimizerConfig.frozen_layers = 1 of 2: layer 0's parameters (rows of the stacked ones, or whole unscanned
  ones) are bitwise unchanged, weight decay included, while layer 1 and the rest train."""
  import dataclasses
  from gpt3_jax.training import trainer
  from gpt3_jax.training.optimizer import param_name
  model = dataclasses.replace(tc.MODEL, attention_pattern=pattern, local_window=8, scan_layers=scan)
  opt = dataclasses.replace(tc.OPTIMIZER, frozen_layers=1)
  result = trainer.train(model, tc.data(tiny_text_dir, tiny_data_dir), opt, tc.MESH, tc.train(train_steps=2),
                         str(tmp_path / "w"))
  from gpt3_jax.parallel import mesh as mesh_lib
  from gpt3_jax.training.assembly import assemble
  asm = assemble(result.model_config, opt, mesh_lib.make_mesh(tc.MESH), seq_len=32)
  with asm.activate():
    fresh = asm.fresh_state(seed=tc.train().seed)
  layer0, layer1 = [], []
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(result.state.params), jax.tree.leaves(fresh.params)):
    name, a, b = param_name(path), np.asarray(a), np.asarray(b)
    if scan and name.startswith(("layers/block", "layers/dense")):  # layer 0 is row 0 (of a dense or a pair unit)
      layer0.append(np.array_equal(a[0], b[0]))
      layer1.append(np.array_equal(a[1:], b[1:]) if pattern == "dense" else None)
    elif scan and name.startswith("layers/local"):  # layer 1 is the pair's local block
      layer1.append(np.array_equal(a, b))
    elif name.startswith(("layers_0/block", "layers_0/dense")):
      layer0.append(np.array_equal(a, b))
    elif name.startswith(("layers_1/block", "layers_0/local")):
      layer1.append(np.array_equal(a, b))
  assert layer0 and all(layer0)
  assert [x for x in layer1 if x is not None] and not any(x for x in layer1 if x is not None)
  with pytest.raises(ValueError, match="frozen_layers=3 but the model has 2 layers"):
    trainer.train(model, tc.data(tiny_text_dir, tiny_data_dir), dataclasses.replace(opt, frozen_layers=3), tc.MESH,
                  tc.train(train_steps=1), str(tmp_path / "bad"))


def test_lora_dropout_changes_training_and_resumes_bit_exactly(base, tmp_path):
  """ModelConfig.lora_dropout = 0.5: the adapters train differently than without dropout (it is on), and a run
  stopped at step 2 and resumed ends bitwise where the straight run does (the masks are a function of the step)."""
  import dataclasses
  from gpt3_jax import workdir as workdir_lib
  from gpt3_jax.training import trainer
  from gpt3_jax.training.optimizer import OptimizerConfig
  loaded = workdir_lib.load_model(base[0])
  data = sft_data.SFTData(FinetuneConfig(train_path=base[1], validation_path=base[2]), loaded.tokenizer_path,
                          loaded.cfg.vocab_size)
  opt = OptimizerConfig(peak_learning_rate=1e-2, warmup_tokens=256, decay_tokens=32 * 8 * 40)

  def run(dropout, name, steps):
    cfg = dataclasses.replace(loaded.cfg, lora_rank=4, lora_dropout=dropout)
    return trainer.train(cfg, data, opt, tc.MESH, tc.train(init_from=base[0], seq_len=32, train_steps=steps,
                                                           eval_every=4, checkpoint_every=2), str(tmp_path / name))

  leaves = lambda r: [np.asarray(x) for x in jax.tree.leaves(r.state.params)]
  straight = run(0.5, "straight", 4)
  run(0.5, "resumed", 2)
  resumed = run(0.5, "resumed", 4)
  assert resumed.initialized_from == "resumed"
  for a, b in zip(leaves(straight), leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  plain = run(0.0, "plain", 4)
  assert any(not np.array_equal(a, b) for a, b in zip(leaves(straight), leaves(plain)))
