"""Our tokenizer interface over a Hugging Face tokenizer gives the ids transformers gives, and is lossless."""

import os
import shutil

import pytest

transformers = pytest.importorskip("transformers")

import hf_fixtures  # noqa: E402
from gpt3_jax.data import tokenizer as tokenizer_lib  # noqa: E402
from gpt3_jax.data.hf_tokenizer import HFTokenizer  # noqa: E402

AWKWARD = ["", " leading space", "double  space", "  two leading", "trailing  ", "new\nline", "\n\nblank lines\n",
           "tab\tbetween", "\ttab first", "non-ASCII: naïve café — 日本語 🙂", "mixed \t \n whitespace",
           "def f(x):\n    return x  # comment\n", "ends with <|endoftext|>? no: a literal"]


@pytest.fixture(scope="module")
def hf_tok_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("hf_tokenizer"))
  hf_fixtures.save_tokenizer(hf_fixtures.train_byte_level_bpe(hf_fixtures.stdlib_texts()), directory)
  return directory


def test_tokenizer_json_ids_match_transformers(hf_tok_dir):
  ours = tokenizer_lib.load_tokenizer(hf_tok_dir)
  assert isinstance(ours, HFTokenizer)
  theirs = transformers.AutoTokenizer.from_pretrained(hf_tok_dir)
  for text in AWKWARD:
    ids = ours.encode(text)
    assert ids == theirs.encode(text, add_special_tokens=False), text
    assert ours.decode(ids) == text
  assert ours.vocab_size == len(theirs) and ours.eot_id == theirs.convert_tokens_to_ids("<|endoftext|>")
  assert ours.decode([ours.eot_id]) == "<|endoftext|>"


def test_vocab_and_merges_files_match_gpt2_tokenizer(hf_tok_dir, tmp_path):
  """The GPT-2 file pair (vocab.json + merges.txt, no tokenizer.json) through our loader and transformers' own
  GPT-2 tokenizer."""
  source = tokenizer_lib.load_tokenizer(hf_tok_dir)
  hf_fixtures.train_byte_level_bpe(hf_fixtures.stdlib_texts()).model.save(str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ["merges.txt", "vocab.json"]
  ours = tokenizer_lib.load_tokenizer(str(tmp_path))
  theirs = transformers.GPT2Tokenizer.from_pretrained(str(tmp_path))
  for text in AWKWARD:
    assert ours.encode(text) == theirs.encode(text, add_special_tokens=False) == source.encode(text), text
    assert ours.decode(ours.encode(text)) == text
  assert ours.eot_id == source.eot_id


def test_fingerprint_names_the_vocabulary(hf_tok_dir, tmp_path):
  copy = shutil.copytree(hf_tok_dir, str(tmp_path / "copy"))
  assert tokenizer_lib.load_tokenizer(copy).fingerprint == tokenizer_lib.load_tokenizer(hf_tok_dir).fingerprint
  other = str(tmp_path / "other")
  hf_fixtures.save_tokenizer(hf_fixtures.train_byte_level_bpe(["a different text " * 20], vocab_size=280), other)
  assert tokenizer_lib.load_tokenizer(other).fingerprint != tokenizer_lib.load_tokenizer(hf_tok_dir).fingerprint
  with pytest.raises(FileNotFoundError, match="does not exist"):
    tokenizer_lib.load_tokenizer(str(tmp_path / "missing.model"))
