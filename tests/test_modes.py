"""`main --mode=sample` and `--mode=score` end to end on a converted Hugging Face GPT-2 directory (with its
tokenizer), checked against transformers' own model and tokenizer; `convert`'s command line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_fixtures  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "def load(fp):\n    return"
ATOL = 1e-4


def _run(module, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300,
                        cwd=REPO, env=env)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf_modes")
  hf_dir = hf_fixtures.make_hf_gpt2_dir(str(root / "hf"), hf_fixtures.stdlib_texts())
  workdir = str(root / "imported")
  out = _run("gpt3_jax.convert", f"--from_hf={hf_dir}", f"--workdir={workdir}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert sorted(os.listdir(os.path.join(workdir, "tokenizer"))) == ["tokenizer.json", "tokenizer_config.json"]
  return hf_dir, workdir


@pytest.mark.slow
def test_score_matches_transformers(converted):
  hf_dir, workdir = converted
  out = _run("gpt3_jax.main", "--mode=score", f"--workdir={workdir}", f"--prompt={PROMPT}")
  assert out.returncode == 0, out.stderr[-3000:]
  row = json.loads(out.stdout.strip().splitlines()[-1])
  tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
  model = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
  ids = tok.encode(PROMPT, add_special_tokens=False)
  assert row["tokens"] == ids and row["text"] == PROMPT
  full = torch.tensor([[tok.convert_tokens_to_ids("<|endoftext|>")] + ids])
  with torch.no_grad():
    logprobs = torch.log_softmax(model(full).logits[0, :-1], -1)
  expected = logprobs[torch.arange(len(ids)), full[0, 1:]].numpy()
  np.testing.assert_allclose(row["logprobs"], expected, atol=ATOL)
  np.testing.assert_allclose(row["total"], expected.sum(), atol=ATOL * len(ids))


@pytest.mark.slow
def test_greedy_sample_matches_transformers_generate(converted):
  hf_dir, workdir = converted
  out = _run("gpt3_jax.main", "--mode=sample", f"--workdir={workdir}", f"--prompt={PROMPT}", "--temperature=0",
             "--max_new_tokens=6")
  assert out.returncode == 0, out.stderr[-3000:]
  tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
  model = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
  ids = torch.tensor([tok.encode(PROMPT, add_special_tokens=False)])
  with torch.no_grad():
    new = model.generate(ids, max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(ids),
                         pad_token_id=tok.eos_token_id)[0, ids.shape[1]:]
  expected = PROMPT + tok.decode(new.tolist())
  assert out.stdout.split("\n", 1)[1].rstrip("\n") == expected


def test_convert_refuses_bad_input_in_one_line(tmp_path):
  out = _run("gpt3_jax.convert", f"--from_hf={tmp_path}", f"--workdir={tmp_path / 'w'}")
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
  assert out.stderr.strip().splitlines()[-1].startswith("error: ") and "config.json" in out.stderr
  assert not os.path.exists(tmp_path / "w")
