"""The seams of a run: initial state from another workdir or a Hugging Face import, seeds that each change only
their own thing, evaluation over every source of a mixture, and the operative config of each parse and start."""

import ast
import dataclasses
import glob
import json
import os

import jax
import numpy as np
import pytest

import tiny_configs as tc
from gpt3_jax import configs
from gpt3_jax import workdir as workdir_lib
from gpt3_jax.data import corpus, pipeline
from gpt3_jax.data.sources import SourceConfig
from gpt3_jax.inference import scoring
from gpt3_jax.training import data_feed, trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def spy(monkeypatch):
  """Records the initial state a run starts from and every global batch it is fed."""
  seen = {"batches": []}
  original_init, original_next = trainer.initial_state, data_feed.DataFeed.next

  def initial_state(run):
    original_init(run)
    seen["state"] = jax.device_get(run.state)

  def next_batch(self, batch_size):
    batch = original_next(self, batch_size)
    seen["batches"].append(np.asarray(batch))
    return batch

  monkeypatch.setattr(trainer, "initial_state", initial_state)
  monkeypatch.setattr(data_feed.DataFeed, "next", next_batch)
  return seen


def _train(tiny_text_dir, tiny_data_dir, workdir, *, model=tc.MODEL, data=None, **train):
  data = data or tc.data(tiny_text_dir, tiny_data_dir)
  return trainer.train(model, data, tc.OPTIMIZER, tc.MESH, tc.train(**train), str(workdir))


def _equal(a, b) -> bool:
  return all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))


def test_seeds_change_only_their_own_thing(tiny_text_dir, tiny_data_dir, tmp_path, spy):
  runs = {}
  for name, init_seed, data_seed in (("base", 0, 0), ("init", 1, 0), ("data", 0, 1)):
    data = dataclasses.replace(tc.data(tiny_text_dir, tiny_data_dir), seed=data_seed)
    _train(tiny_text_dir, tiny_data_dir, tmp_path / name, data=data, train_steps=2, seed=init_seed)
    runs[name] = (spy["state"].params, list(spy["batches"]))
    spy["batches"].clear()
  base, init, data = runs["base"], runs["init"], runs["data"]
  assert _equal(base[1], init[1]) and not _equal(base[0], init[0])  # TrainConfig.seed: the initialization only
  assert _equal(base[0], data[0]) and not _equal(base[1], data[1])  # DataConfig.seed: the data order only


@pytest.fixture(scope="module")
def pretrained(tiny_text_dir, tiny_data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("pretrained")
  _train(tiny_text_dir, tiny_data_dir, workdir, train_steps=4)
  return str(workdir)


def test_init_from_a_workdir_takes_its_params_with_a_fresh_optimizer(tiny_text_dir, tiny_data_dir, tmp_path,
                                                                     pretrained, spy):
  result = _train(tiny_text_dir, tiny_data_dir, tmp_path, train_steps=2, init_from=pretrained)
  start = spy["state"]
  source = workdir_lib.load_model(pretrained)
  assert source.step == 4 and int(start.step) == 0 and result.initialized_from == pretrained
  assert _equal(start.params, source.params)
  assert all(not np.any(x) for x in jax.tree.leaves(start.opt_state))  # Adam moments and counts at zero
  assert result.step == 2 and not _equal(jax.device_get(result.state.params), source.params)
  again = _train(tiny_text_dir, tiny_data_dir, tmp_path, train_steps=3, init_from=pretrained)
  assert again.initialized_from == "resumed" and int(spy["state"].step) == 2  # its own checkpoint wins


def test_init_from_a_different_shape_names_the_parameter_before_any_write(tiny_text_dir, tiny_data_dir, tmp_path,
                                                                          pretrained):
  with pytest.raises(ValueError, match=r"parameter \[.*\] has shape \(.*\) in the initial parameters but \(.*\) in "
                                       r"this run's model"):
    _train(tiny_text_dir, tiny_data_dir, tmp_path, model=tc.MODEL.replace(d_model=48), init_from=pretrained)
  assert not os.path.exists(tmp_path / "operative_config.gin") and not os.path.exists(tmp_path / "tensorboard")
  with pytest.raises(ValueError, match="init_from"):
    _train(tiny_text_dir, tiny_data_dir, tmp_path / "x", init_from=str(tmp_path / "nothing"))


@pytest.mark.slow
def test_init_from_a_hugging_face_import_trains_on_text_with_its_tokenizer(tiny_text_dir, tiny_data_dir, tmp_path,
                                                                           spy):
  """Fine-tuning an imported GPT-2: the data is tokenized by its tokenizer, training starts from its weights, and
  the first step's loss equals transformers' loss on the same batch."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  import hf_fixtures
  hf_dir = hf_fixtures.make_hf_gpt2_dir(str(tmp_path / "hf"), hf_fixtures.stdlib_texts())
  imported = str(tmp_path / "imported")
  from gpt3_jax import convert
  convert.import_hf(hf_dir, imported)
  source = workdir_lib.load_model(imported)
  data = dataclasses.replace(tc.data(tiny_text_dir, tiny_data_dir), tokenizer_path=source.tokenizer_path)
  _train(tiny_text_dir, tiny_data_dir, tmp_path / "tuned", model=source.cfg, data=data, train_steps=2,
         init_from=imported)
  assert _equal(spy["state"].params, source.params)
  with open(tmp_path / "tuned" / "metrics.jsonl") as f:
    first = next(r for r in map(json.loads, f) if r["split"] == "train" and r["step"] == 1)
  batch = torch.as_tensor(spy["batches"][0], dtype=torch.long)
  model = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
  with torch.no_grad():
    logits = model(batch[:, :-1]).logits
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
  np.testing.assert_allclose(first["loss"], float(expected), atol=1e-4)


def test_evaluation_covers_every_source_of_a_mixture(tiny_text_dir, tiny_data_dir, tmp_path):
  sources = tuple(SourceConfig(name=n, kind="text_files", paths=(os.path.join(tiny_text_dir, n),))
                  for n in ("email", "http"))
  data = dataclasses.replace(tc.data(tiny_text_dir, tiny_data_dir), paths=(), sources=sources, weights=(3.0, 1.0))
  result = _train(tiny_text_dir, tiny_data_dir, tmp_path, data=data, train_steps=2, seq_len=16)
  metrics = result.eval_metrics
  assert set(metrics) == {"loss", "email/loss", "http/loss"}
  assert metrics["loss"] == pytest.approx(0.75 * metrics["email/loss"] + 0.25 * metrics["http/loss"], rel=1e-6)
  streams = corpus.prepare_corpus(data).streams
  params = jax.device_get(result.state.params)
  for stream in streams:  # independently: the inference scorer over the same evaluation windows
    windows = np.concatenate(list(pipeline.eval_batches(stream.valid_tokens, seq_len=16, batch_size=8,
                                                        max_batches=2, drop_remainder=True)))
    rows = scoring.score(result.model_config, params, windows.tolist())
    expected = -np.mean([lp for r in rows for lp in r["logprobs"]])
    assert metrics[f"{stream.name}/loss"] == pytest.approx(expected, abs=1e-4)
  assert abs(metrics["email/loss"] - metrics["http/loss"]) > 1e-3
  with open(tmp_path / "metrics.jsonl") as f:
    assert {"email/loss", "http/loss"} <= set(next(r for r in map(json.loads, f) if r["split"] == "eval"))


def test_each_parse_carries_its_own_operative_config(tmp_path):
  five = configs.parse_and_build(["gin_configs/models/tiny.gin"], ["TrainConfig.train_steps = 5"])
  seven = configs.parse_and_build(["gin_configs/models/tiny.gin"], ["TrainConfig.train_steps = 7"])
  assert "TrainConfig.train_steps = 5" in five.operative_config
  assert "TrainConfig.train_steps = 7" in seven.operative_config
  workdir_lib.write_operative_config(str(tmp_path), five.operative_config)  # after the second parse
  assert "TrainConfig.train_steps = 5" in (tmp_path / "operative_config.gin").read_text()


def test_a_refused_resume_leaves_the_workdir_as_it_was(tiny_text_dir, tiny_data_dir, tmp_path):
  def train(model, config):
    return trainer.train(model, tc.data(tiny_text_dir, tiny_data_dir), tc.OPTIMIZER, tc.MESH,
                         tc.train(train_steps=2), str(tmp_path), operative_config=config)
  train(tc.MODEL, "first\n")
  events = sorted(glob.glob(str(tmp_path / "tensorboard" / "*")))
  with pytest.raises(ValueError, match="n_ctx"):
    train(tc.MODEL.replace(n_ctx=64), "refused\n")
  assert (tmp_path / "operative_config.gin").read_text() == "first\n"
  assert sorted(glob.glob(str(tmp_path / "tensorboard" / "*"))) == events
  assert not glob.glob(str(tmp_path / "operative_config.*.gin"))
  train(tc.MODEL, "second\n")  # a good restart is recorded beside the first
  assert (tmp_path / "operative_config.gin").read_text() == "second\n"
  assert (tmp_path / "operative_config.1.gin").read_text() == "first\n"


def test_no_function_in_training_is_longer_than_a_screen():
  limit = 60
  for path in glob.glob(os.path.join(REPO, "gpt3_jax", "training", "*.py")):
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        length = node.end_lineno - node.lineno + 1
        assert length <= limit, f"{os.path.basename(path)}:{node.name} has {length} lines"
