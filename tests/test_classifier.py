"""Fine-tuning a classification head: its rows, loss and metrics worked by hand; a synthetic task from chance to at
least 95% held out (accuracy and macro-F1) with the best parameters kept; LoRA with the head; and the Hugging Face
GPT2ForSequenceClassification export."""

import dataclasses
import os

import jax
import numpy as np
import pytest

import tiny_configs as tc
from text_fixtures import CharTokenizer, keyword_sentences, write_jsonl
from gpt3_jax.finetune import sft_data
from gpt3_jax.finetune.config import FinetuneConfig
from gpt3_jax.model.config import ModelConfig
from gpt3_jax.model.transformer import GPT, unboxed_params
from gpt3_jax.training import row_format, train_step, validation_loss


def test_a_classification_row_its_loss_and_metrics_by_hand():
  row = sft_data.classification_row(CharTokenizer(), "ab", 2, seq_len=6, vocab_size=16)
  # [eot] a b | pad pad | label 2 stored as -(16 + 1 + 2)
  np.testing.assert_array_equal(row, [-1, 1, 2, -1, -1, -19])
  window = np.concatenate([row, sft_data.masked([0])]).astype(np.int32)[None]  # + the next row's masked [eot]
  tokens, last, labels = row_format.classification_rows(window, 16)
  np.testing.assert_array_equal(tokens, [[0, 1, 2, 0, 0, 0]])
  assert int(last[0]) == 2 and int(labels[0]) == 2
  cfg = ModelConfig(vocab_size=16, n_ctx=8, d_model=8, n_layers=1, n_heads=2, d_head=4, class_labels=("x", "y", "z"))
  params = unboxed_params(GPT(cfg).init(jax.random.key(0), np.zeros((1, 8), np.int32))["params"])
  total, count = train_step.loss_fn(params, cfg, window)
  hidden = GPT(cfg).apply({"params": params}, np.array([[0, 1, 2]]), method=GPT.hidden)
  expected = -jax.nn.log_softmax(np.asarray(hidden[0, 2]) @ np.asarray(params["score"]))[2]
  assert float(count) == 1.0 and float(total) == pytest.approx(float(expected), rel=1e-5)
  assert sft_data.classification_row(CharTokenizer(), "abcde", 0, seq_len=6, vocab_size=16) is None  # 1 + 5 + 1 > 6
  # labels 0 0 1 1 2, predicted 0 1 1 1 0: F1 per class 2/4, 4/5, 0 -> macro 0.4333; accuracy 3/5
  metrics = validation_loss.classification_metrics(np.array([0, 1, 1, 1, 0]), np.array([0, 0, 1, 1, 2]), 3)
  assert metrics["accuracy"] == pytest.approx(0.6) and metrics["macro_f1"] == pytest.approx(1.3 / 3)


def test_labels_come_from_the_data_and_unknown_ones_are_errors_or_skips(tmp_path):
  train = write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "no"}, {"text": "b", "label": "yes"},
                                                 {"text": "c", "label": 1}, {"text": " ", "label": "no"}])
  valid = write_jsonl(tmp_path / "valid.jsonl", [{"text": "d", "label": "maybe"}, {"text": "e", "label": "yes"}])
  cfg = FinetuneConfig(task="classify", train_path=train, validation_path=valid, on_bad_example="skip")
  data = sft_data.SFTData(cfg, "", 16)
  assert data.labels() == ("1", "no", "yes")  # sorted distinct training labels, as strings
  assert dict(data._read[2]) == {"empty_text": 1, "unknown_label": 1}
  with pytest.raises(ValueError, match=r"valid.jsonl:1: label 'maybe' is not one of \['no', 'yes'\]"):
    sft_data.SFTData(dataclasses.replace(cfg, on_bad_example="error", train_path=write_jsonl(
        tmp_path / "t2.jsonl", [{"text": "a", "label": "no"}, {"text": "b", "label": "yes"}])), "", 16).check()
  with pytest.raises(ValueError, match="FinetuneConfig.task='regress' must be one of"):
    FinetuneConfig(task="regress")


# --- end to end on an imported GPT-2 ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keywords(tmp_path_factory):
  """Sentences labelled by which keyword set they hold (json/email/http: 'web', class/import/return: 'code');
  held-out sentences are new filler combinations."""
  train, held_out = keyword_sentences(("web", "code"), n_held_out=64)
  train, held_out = ([{"text": t, "label": y} for t, y in split] for split in (train, held_out))
  root = tmp_path_factory.mktemp("keywords")
  return write_jsonl(root / "train.jsonl", train), write_jsonl(root / "valid.jsonl", held_out)


def _classifier(imported_gpt2, keywords, workdir, steps, peak=1e-2, lora_rank=0, **train_changes):
  from gpt3_jax import workdir as workdir_lib
  from gpt3_jax.training import trainer
  from gpt3_jax.training.optimizer import OptimizerConfig
  loaded = workdir_lib.load_model(imported_gpt2)
  data = sft_data.SFTData(FinetuneConfig(task="classify", train_path=keywords[0], validation_path=keywords[1]),
                          loaded.tokenizer_path, loaded.cfg.vocab_size)
  cfg = dataclasses.replace(loaded.cfg, class_labels=data.labels(), lora_rank=lora_rank)
  opt = OptimizerConfig(peak_learning_rate=peak, warmup_tokens=256, decay_tokens=32 * 8 * steps)
  train_cfg = tc.train(init_from=imported_gpt2, seq_len=32, train_steps=steps, **train_changes)
  return trainer.train(cfg, data, opt, tc.MESH, train_cfg, str(workdir)), data


def test_a_classification_head_goes_from_chance_to_95_percent_and_keeps_the_best(imported_gpt2, keywords, tmp_path):
  from gpt3_jax import workdir as workdir_lib
  from gpt3_jax.parallel import mesh as mesh_lib
  from gpt3_jax.training.assembly import assemble
  from gpt3_jax.training.optimizer import OptimizerConfig
  result, data = _classifier(imported_gpt2, keywords, tmp_path / "cls", 120, eval_every=40, eval_batches=8,
                             keep_best_metric="accuracy")
  corpus = data.prepare(32)
  asm = assemble(result.model_config, OptimizerConfig(), mesh_lib.make_mesh(tc.MESH), seq_len=32)
  with asm.activate():
    start = asm.state_from_params(workdir_lib.load_model(imported_gpt2).params)  # base + a fresh head
    before = validation_loss.evaluate(asm, start.params, corpus.streams[0].valid_tokens, batch_size=8,
                                      max_batches=8)
  after = result.eval_metrics
  assert before["examples"] == after["examples"] == 64
  assert abs(before["accuracy"] - 0.5) < 0.2 and after["accuracy"] >= 0.95 and after["macro_f1"] >= 0.95, \
      (before, after)
  assert result.unigram_loss == pytest.approx(np.log(2), abs=0.05)  # the label prior of balanced classes
  # The best parameters by accuracy are kept in <workdir>/best and read like a workdir.
  best = workdir_lib.load_model(str(tmp_path / "cls" / workdir_lib.BEST))
  assert result.best["metric"] == "accuracy" and result.best["value"] >= after["accuracy"]
  assert best.step == result.best["step"] and best.cfg.class_labels == ("code", "web")


def test_keep_best_refuses_a_metric_the_run_does_not_report(imported_gpt2, keywords, tmp_path):
  for metric, message in [("accuracy", "is a classifier's metric"), ("bleu", "is not a metric the run reports"),
                          ("fewshot/lambada/0shot/acc", "needs task 'lambada' in TrainConfig.task_eval_tasks")]:
    from gpt3_jax.training import trainer
    with pytest.raises(ValueError, match=message):
      trainer.train(tc.MODEL, tc.data("/nonexistent", "/nonexistent"), tc.OPTIMIZER, tc.MESH,
                    tc.train(keep_best_metric=metric), str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")


def test_lora_with_a_head_trains_adapters_and_head_and_exports_as_sequence_classification(
    imported_gpt2, keywords, tmp_path):
  """A LoRA classifier: only the adapters and the head change (the base is bitwise the same and holds no optimizer
  state); its Hugging Face export, a GPT2ForSequenceClassification reading the last non-padding token, gives the
  same class logits on padded rows to 1e-4."""
  from gpt3_jax import convert, workdir as workdir_lib
  from gpt3_jax.training.optimizer import param_name
  result, data = _classifier(imported_gpt2, keywords, tmp_path / "lora", 4, lora_rank=4, eval_every=4,
                             eval_batches=1)
  base = {param_name(p): np.asarray(x) for p, x in
          jax.tree_util.tree_leaves_with_path(workdir_lib.load_model(imported_gpt2).params)}
  trained = {param_name(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(result.state.params)}
  new = sorted(set(trained) - set(base))
  assert "score" in new and len(new) == 9  # the head and 8 adapters
  assert all(np.array_equal(trained[n], base[n]) for n in base)
  moments = sum(x.size for x in jax.tree.leaves(result.state.opt_state)) - 1
  assert moments == 2 * sum(trained[n].size for n in new)

  convert.export_hf(str(tmp_path / "lora"), str(tmp_path / "hf_out"))
  import torch
  import transformers
  hf = transformers.GPT2ForSequenceClassification.from_pretrained(str(tmp_path / "hf_out")).eval()
  assert hf.config.id2label == {0: "code", 1: "web"}
  corpus = data.prepare(32)
  windows = np.stack([corpus.streams[0].valid_tokens[i * 32:i * 32 + 33] for i in range(8)])
  ours, _ = train_step.classifier_outputs(jax.tree.map(np.asarray, result.state.params), result.model_config,
                                          windows)
  # As Hugging Face sees our rows: end-of-text, the text, end-of-text padding (its pad token; the label slot too).
  eot = workdir_lib.load_model(imported_gpt2).tokenizer().eot_id
  rows = np.where(windows[:, :-1] >= 0, windows[:, :-1], eot)
  rows[:, 0] = eot
  rows[:, -1] = eot
  with torch.no_grad():
    theirs = hf(torch.tensor(rows)).logits.numpy()
  np.testing.assert_allclose(theirs, np.asarray(ours), atol=1e-4)


def test_a_tfds_dataset_gives_the_same_rows_as_its_jsonl(imported_gpt2, keywords, tmp_path):
  """FinetuneConfig.tfds_name: a TFDS dataset prepared as ArrayRecord (text / label features, train and validation
  splits) reads into exactly the rows of the same examples from JSONL."""
  import json
  import tensorflow_datasets as tfds
  from gpt3_jax import workdir as workdir_lib
  splits = {name: [json.loads(line) for line in open(path)] for name, path in zip(("train", "validation"), keywords)}

  class KeywordTask(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    code_path = None

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, disable_shuffling=True, features=tfds.features.FeaturesDict({
          "text": tfds.features.Text(), "label": tfds.features.Text()}))  # records in the JSONL order

    def _split_generators(self, dl_manager):
      return {name: self._generate_examples(rows) for name, rows in splits.items()}

    def _generate_examples(self, rows):
      for i, row in enumerate(rows):
        yield i, row

  KeywordTask(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  loaded = workdir_lib.load_model(imported_gpt2)
  from_jsonl = sft_data.SFTData(FinetuneConfig(task="classify", train_path=keywords[0], validation_path=keywords[1]),
                                loaded.tokenizer_path, loaded.cfg.vocab_size).prepare(32)
  from_tfds = sft_data.SFTData(FinetuneConfig(task="classify", tfds_name="keyword_task", tfds_data_dir=str(tmp_path)),
                               loaded.tokenizer_path, loaded.cfg.vocab_size).prepare(32)
  np.testing.assert_array_equal(from_tfds.streams[0].train_tokens, from_jsonl.streams[0].train_tokens)
  np.testing.assert_array_equal(from_tfds.streams[0].valid_tokens, from_jsonl.streams[0].valid_tokens)
  with pytest.raises(ValueError, match="has no feature 'prompt'"):
    sft_data.SFTData(FinetuneConfig(tfds_name="keyword_task", tfds_data_dir=str(tmp_path)), "", 1).check()
