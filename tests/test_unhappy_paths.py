"""Bad input a new user tried (issue: unhappy paths): each is a one-line error before any write, or ends cleanly."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tiny_configs as tc
from gpt3_jax import configs, run_summary
from gpt3_jax.data.corpus import DataConfig
from gpt3_jax.data.sources import SourceConfig
from gpt3_jax.training import trainer
from gpt3_jax.training.run_result import RunResult

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(module, *args):
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=240, cwd=REPO,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


def _one_line_error(result, *fragments):
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  for fragment in fragments:
    assert fragment in errors[0], errors[0]


def test_a_token_file_run_without_a_tokenizer_ends_cleanly(tmp_path, capsys):
  rng = np.random.default_rng(0)
  for name, n in (("train.bin", 20_000), ("val.bin", 2_000)):
    rng.integers(0, 300, n).astype(np.uint16).tofile(tmp_path / name)
  source = SourceConfig(name="ids", kind="token_files", train_path=str(tmp_path / "train.bin"),
                        validation_path=str(tmp_path / "val.bin"), token_format="nanogpt")
  data = DataConfig(sources=(source,), vocab_size=300, data_dir=str(tmp_path / "cache"))
  train_cfg = tc.train(train_steps=2, sample_tokens=8)
  result = trainer.train(tc.MODEL, data, tc.OPTIMIZER, tc.MESH, train_cfg, str(tmp_path / "run"))
  assert result.tokenizer is None and result.step == 2
  run_summary.print_summary(result, train_cfg)
  out = capsys.readouterr().out
  assert "validation loss" in out and "no sample: this run has no tokenizer" in out


def test_the_summary_says_above_when_the_model_is_worse_than_unigram(capsys):
  result = RunResult(step=3, eval_loss=7.5, eval_metrics={"loss": 7.5}, unigram_loss=6.0, compile_seconds=0.0,
                     model_config=tc.MODEL, state=None, tokenizer=None, preempted=False, initialized_from="scratch")
  run_summary.print_summary(result, tc.train(sample_tokens=0))
  out = capsys.readouterr().out
  assert "the model is 1.500 nats/token ABOVE the unigram baseline" in out and "-1.5" not in out


@pytest.mark.parametrize("binding, message", [
    ("TrainConfig.train_steps = 'ten'", "TrainConfig.train_steps must be an integer, got 'ten' (str); e.g. "
                                        "TrainConfig.train_steps = 100"),
    ("OptimizerConfig.peak_learning_rate = -3e-3", "OptimizerConfig.peak_learning_rate must be a finite number > 0"),
    ("OptimizerConfig.peak_learning_rate = 0.0", "OptimizerConfig.peak_learning_rate must be a finite number > 0"),
    ("OptimizerConfig.peak_learning_rate = 1e400", "OptimizerConfig.peak_learning_rate must be a finite number"),
    ("OptimizerConfig.warmup_tokens = -1.0", "OptimizerConfig.warmup_tokens must be a finite number >= 0"),
    ("OptimizerConfig.decay_tokens = 0.0", "OptimizerConfig.decay_tokens must be a finite number > 0"),
    ("TrainConfig.global_batch_size = 0", "TrainConfig.global_batch_size must be positive, got 0"),
    ("DataConfig.vocab_size = 8192.5", "DataConfig.vocab_size must be an integer"),
    ("DataConfig.vocab_size = 0", "DataConfig.vocab_size must be positive, got 0; e.g. DataConfig.vocab_size = 8192"),
    ("DataConfig.validation_fraction = 1.5", "DataConfig.validation_fraction must be in "),
    ("ModelConfig.local_window = '256'", "ModelConfig.local_window must be an integer"),
    ("ModelConfig.dtype = 16", "ModelConfig.dtype must be a string"),
    ("MeshConfig.shape = (2, 2)", "MeshConfig.shape must be a tuple of 3 values"),
    ("ModelConfig.scan_layers = 'no'", "ModelConfig.scan_layers must be True or False"),
])
def test_bad_values_name_the_setting_and_a_valid_value(binding, message):
  with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
    configs.parse_and_build(["gin_configs/models/tiny.gin"], [binding])


@pytest.mark.slow
def test_main_refuses_a_mistyped_binding_before_writing_anything(tmp_path):
  workdir = tmp_path / "run"
  _one_line_error(_run("gpt3_jax.main", "--gin_file=gin_configs/models/tiny.gin",
                       "--gin.TrainConfig.train_steps='ten'", f"--workdir={workdir}"), "TrainConfig.train_steps")
  assert not workdir.exists()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sample", "score"])
def test_sample_and_score_on_a_workdir_without_a_model_are_one_line_errors(mode, tmp_path):
  _one_line_error(_run("gpt3_jax.main", f"--mode={mode}", f"--workdir={tmp_path}", "--prompt=x"),
                  "has neither training checkpoints nor a Hugging Face import")


def test_convert_refuses_a_gpt2_config_it_cannot_represent_in_one_line(tmp_path):
  hf = tmp_path / "hf"
  hf.mkdir()
  (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 300, "n_positions": 32,
                                              "n_embd": 32, "n_layer": 2, "n_head": 4,
                                              "activation_function": "relu"}))
  _one_line_error(_run("gpt3_jax.convert", f"--from_hf={hf}", f"--workdir={tmp_path / 'out'}"),
                  "activation_function")
  assert not (tmp_path / "out").exists()
