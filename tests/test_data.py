"""Tests of the data layer: text files -> TFDS -> tokenizer -> token files -> training stream."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import numpy as np
import pytest

from gpt3_jax.data import corpus
from gpt3_jax.data import mixture
from gpt3_jax.data import pipeline
from gpt3_jax.data import text_files
from gpt3_jax.data import token_store
from gpt3_jax.data import tokenizer as tokenizer_lib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STDLIB = sysconfig.get_paths()["stdlib"]
VOCAB = 512
UNICODE_TEXT = "Grüße, 日本語のテキスト, emoji 😀🚀, Ελληνικά, עברית, tab\tend.\n" * 3


def _write(path, data: bytes | str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data.encode() if isinstance(data, str) else data)


def _make_corpus(root: str) -> None:
  """Real code (stdlib json package + a few modules), prose, one bad-UTF-8 and one empty file."""
  shutil.copytree(os.path.join(STDLIB, "json"), os.path.join(root, "code", "json"),
                  ignore=shutil.ignore_patterns("__pycache__"))
  for name in ("textwrap.py", "colorsys.py", "bisect.py", "keyword.py", "fnmatch.py", "shlex.py"):
    shutil.copy(os.path.join(STDLIB, name), os.path.join(root, "code", name))
  for i in range(12):
    _write(os.path.join(root, "prose", f"note_{i:02d}.md"), f"# Note {i}\n\n" + UNICODE_TEXT * (i + 1))
  _write(os.path.join(root, "prose", "latin1.txt"), b"caf\xe9 au lait\n")
  _write(os.path.join(root, "prose", "blank.txt"), "  \n\n")
  _write(os.path.join(root, "prose", "ignored.bin"), "not a text extension")


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> str:
  root = str(tmp_path_factory.mktemp("corpus"))
  _make_corpus(root)
  return root


@pytest.fixture(scope="session")
def builder(corpus_dir, tmp_path_factory):
  return text_files.prepare_text_files(corpus_dir, str(tmp_path_factory.mktemp("tfds")),
                                       validation_fraction=0.2)


@pytest.fixture(scope="session")
def tok(builder, tmp_path_factory) -> tokenizer_lib.Tokenizer:
  src = builder.as_data_source("train")
  texts = (src[i]["text"].decode() for i in range(len(src)))
  return tokenizer_lib.train_tokenizer(texts, str(tmp_path_factory.mktemp("tok") / "t.model"),
                                       vocab_size=VOCAB)


# ---------------------------------------------------------------- text files / TFDS


def _usable_files(root: str) -> dict[str, str]:
  out = {}
  for f in text_files.find_files(root):
    with open(f.path, "rb") as fh:
      try:
        text = fh.read().decode()
      except UnicodeDecodeError:
        continue
    if text.strip():
      out[f.path] = text
  return out


def test_prepare_splits_by_path_hash_and_keeps_texts(builder, corpus_dir):
  expected = _usable_files(corpus_dir)
  seen = {}
  for split in ("train", "validation"):
    src = builder.as_data_source(split)
    seen[split] = {src[i]["path"].decode(): src[i]["text"].decode() for i in range(len(src))}
  assert not set(seen["train"]) & set(seen["validation"])
  assert {**seen["train"], **seen["validation"]} == expected
  assert seen["validation"] and seen["train"]
  for f in text_files.find_files(corpus_dir):
    if f.path in expected:
      in_valid = text_files.split_fraction(f.key) < 0.2
      assert (f.path in seen["validation"]) == in_valid, f.key
  # Keys are relative to the parent of the input directory: stable when the corpus moves.
  keys = {f.key for f in text_files.find_files(corpus_dir)}
  assert os.path.join(os.path.basename(corpus_dir), "code", "json", "decoder.py") in keys


def test_invalid_utf8_and_empty_files_are_skipped_and_reported(builder, corpus_dir):
  meta = builder.info.metadata
  assert meta["skipped_invalid_utf8"] == [os.path.join(corpus_dir, "prose", "latin1.txt")]
  assert meta["skipped_empty"] == [os.path.join(corpus_dir, "prose", "blank.txt")]
  all_paths = [p for s in ("train", "validation") for p in
               (x["path"].decode() for x in builder.as_data_source(s))]
  assert not any(p.endswith(("latin1.txt", "blank.txt", "ignored.bin")) for p in all_paths)


def test_split_guarantees_one_file_per_split():
  files = [text_files.SourceFile(path=f"/x/{k}", key=k, size=1, mtime_ns=0) for k in ("a", "b", "c")]
  train, valid = text_files.split_files(files, 0.0)
  assert len(valid) == 1 and len(train) == 2
  train, valid = text_files.split_files(files, 1.0)
  assert len(valid) == 2 and len(train) == 1
  train, valid = text_files.split_files(files[:1], 0.0)
  assert (len(train), len(valid)) == (1, 0)
  # Deterministic: the same keys always land in the same split.
  assert text_files.split_files(files, 0.5) == text_files.split_files(list(reversed(files)), 0.5)


def test_prepare_reuses_then_reprepares_on_change(tmp_path):
  src = tmp_path / "src"
  for i in range(3):
    _write(str(src / f"f{i}.txt"), f"file {i}\n")
  data_dir = str(tmp_path / "data")
  b1 = text_files.prepare_text_files(str(src), data_dir)
  info = os.path.join(b1.data_dir, "dataset_info.json")
  mtime = os.stat(info).st_mtime_ns
  b2 = text_files.prepare_text_files(str(src), data_dir)
  assert os.fspath(b2.data_dir) == os.fspath(b1.data_dir)
  assert os.stat(info).st_mtime_ns == mtime
  _write(str(src / "f1.txt"), "file 1 changed, and longer\n")
  os.utime(src / "f1.txt", ns=(mtime + 10**9, mtime + 10**9))
  b3 = text_files.prepare_text_files(str(src), data_dir)
  assert os.fspath(b3.data_dir) != os.fspath(b1.data_dir)
  texts = {x["text"].decode() for s in ("train", "validation") for x in b3.as_data_source(s)}
  assert "file 1 changed, and longer\n" in texts and "file 1\n" not in texts
  assert os.stat(info).st_mtime_ns == mtime  # The old version is left alone.


def test_missing_path_and_empty_glob_raise(tmp_path):
  missing = str(tmp_path / "nope")
  with pytest.raises(ValueError, match="nope"):
    text_files.prepare_text_files(missing, str(tmp_path / "d"))
  pattern = str(tmp_path / "*.txt")
  with pytest.raises(ValueError, match=r"\*\.txt"):
    text_files.prepare_text_files(pattern, str(tmp_path / "d"))
  _write(str(tmp_path / "only" / "x.csv"), "a,b\n")
  with pytest.raises(ValueError, match="only"):
    text_files.find_files(str(tmp_path / "only"))


def test_glob_and_file_list_inputs(corpus_dir):
  files = text_files.find_files([os.path.join(corpus_dir, "code", "json", "*.py"),
                                 os.path.join(corpus_dir, "prose", "note_00.md")])
  names = sorted(os.path.basename(f.path) for f in files)
  assert names == sorted(["__init__.py", "decoder.py", "encoder.py", "scanner.py", "tool.py",
                          "note_00.md"])
  assert {f.key for f in files} >= {"decoder.py", "note_00.md"}
  assert text_files.find_files(corpus_dir, None) == text_files.find_files(corpus_dir)


def test_default_corpus_is_stdlib_source_without_site_packages():
  paths = text_files.default_corpus_paths()
  assert paths == [STDLIB]
  files = text_files.find_files(paths, text_files.default_corpus_extensions())
  assert len(files) > 500
  assert any(f.path == os.path.join(STDLIB, "os.py") for f in files)
  assert all(f.path.endswith(".py") for f in files)
  assert not any(("site-packages" in f.path or "dist-packages" in f.path) for f in files)


# ---------------------------------------------------------------- tokenizer


ROUND_TRIP_CASES = [
    "def f(x):\n\treturn x  # two spaces\n\n\n    indented = {'a': [1, 2]}\n",
    "   leading spaces and trailing   ",
    "\n",
    "\n\n\t\t\n  \n",
    "",
    UNICODE_TEXT,
    "mixed 🧪 emoji, 漢字かな交じり文, café, \u00a0nbsp, zero\u200bwidth, \r\nCRLF",
    "literal <|endoftext|> inside a document",
]


@pytest.mark.parametrize("text", ROUND_TRIP_CASES)
def test_tokenizer_round_trip(tok, text):
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  assert tok.eot_id not in ids


def test_tokenizer_special_pieces(tok):
  assert tok.vocab_size == VOCAB
  assert 0 <= tok.eot_id < tok.vocab_size
  newline = tok.encode("\n")
  assert len(newline) == 1 and newline[0] != tok.eot_id
  assert tok.decode(tok.encode("a") + [tok.eot_id] + tok.encode("b")) == "a<|endoftext|>b"


def test_tokenizer_chunked_encode_matches_whole(tok, corpus_dir):
  text = open(os.path.join(corpus_dir, "code", "textwrap.py")).read() * 16
  assert len(list(tokenizer_lib._chunks(text, tokenizer_lib.ENCODE_CHUNK_CHARS))) >= 4
  ids = tok.encode(text)
  assert ids == tok._sp.encode(text, out_type=int)  # pylint: disable=protected-access
  assert tok.decode(ids) == text


def test_tokenizer_reused_and_atomic(tmp_path, tok):
  path = str(tmp_path / "m.model")

  def texts(fail: bool):
    for i in range(300):
      yield f"line {i}: some words, more words\n" * 3
    if fail:
      raise RuntimeError("interrupted")

  with pytest.raises(RuntimeError, match="interrupted"):
    tokenizer_lib.train_tokenizer(texts(True), path, vocab_size=300)
  assert os.listdir(tmp_path) == []  # No half model, no temp dir.
  first = tokenizer_lib.train_tokenizer(texts(False), path, vocab_size=300)
  mtime = os.stat(path).st_mtime_ns
  again = tokenizer_lib.train_tokenizer(["other text"], path, vocab_size=400)
  assert again.fingerprint == first.fingerprint and again.vocab_size == 300
  assert os.stat(path).st_mtime_ns == mtime
  assert os.listdir(tmp_path) == ["m.model"]
  assert first.fingerprint != tok.fingerprint


# ---------------------------------------------------------------- token store


def test_token_file_packs_documents_with_eot(builder, tok, tmp_path):
  src = builder.as_data_source("train")
  out = str(tmp_path / "train.bin")
  tokens = token_store.tokenize_split(src, tok, out)
  assert tokens.dtype == np.uint16 and isinstance(tokens, np.memmap)
  expected = []
  for i in range(len(src)):
    expected += tok.encode(src[i]["text"].decode()) + [tok.eot_id]
  np.testing.assert_array_equal(tokens, np.asarray(expected, np.uint16))
  assert int((tokens == tok.eot_id).sum()) == len(src)
  meta = json.load(open(out + ".json"))
  assert meta["num_tokens"] == len(expected) and meta["vocab_size"] == VOCAB
  assert meta["tokenizer_fingerprint"] == tok.fingerprint and meta["dtype"] == "<u2"
  with pytest.raises(ValueError):
    tokens[0] = 1  # Read-only.
  mtime = os.stat(out).st_mtime_ns
  again = token_store.tokenize_split(src, tok, out)
  assert os.stat(out).st_mtime_ns == mtime and len(again) == len(expected)
  assert sorted(os.listdir(tmp_path)) == ["train.bin", "train.bin.json"]


def test_token_dtype_by_vocab():
  assert token_store.token_dtype(8192) == np.dtype("<u2")
  assert token_store.token_dtype(65536) == np.dtype("<u2")
  assert token_store.token_dtype(65537) == np.dtype("<u4")


def test_load_tokens_refuses_bad_files(tok, tmp_path):
  out = str(tmp_path / "t.bin")
  token_store.tokenize_split(["hello world\n", "second doc"], tok, out)
  other = tokenizer_lib.train_tokenizer((f"word{i} " * 50 for i in range(200)),
                                        str(tmp_path / "other.model"), vocab_size=300)
  with pytest.raises(ValueError, match="t.bin"):
    token_store.load_tokens(out, np.uint16, tokenizer=other)
  with pytest.raises(ValueError, match="t.bin"):
    token_store.load_tokens(out, np.uint32)
  with open(out, "ab") as f:
    f.write(b"\x00")
  with pytest.raises(ValueError, match="t.bin.*multiple of 2"):
    token_store.load_tokens(out, np.uint16)
  # A stale file is re-tokenized, not trusted.
  with open(out + ".json") as f:
    meta = json.load(f)
  meta["tokenizer_fingerprint"] = "stale"
  with open(out + ".json", "w") as f:
    json.dump(meta, f)
  tokens = token_store.tokenize_split(["hello world\n", "second doc"], tok, out)
  assert list(tokens) == tok.encode("hello world\n") + [tok.eot_id] + tok.encode("second doc") + [
      tok.eot_id]


# ---------------------------------------------------------------- pipeline

SEQ = 7
N_TOKENS = 1000
N_WIN = (N_TOKENS - 1) // SEQ  # 142


def _stream():
  return np.arange(N_TOKENS, dtype=np.uint16)


def _iterator(tokens, *, seq_len, global_batch_size, seed, process_index=0, process_count=1):
  """The production training stream of one corpus: a one-source mixture."""
  return mixture.Mixture([tokens], [1.0], seq_len=seq_len, global_batch_size=global_batch_size,
                         seed=seed).iterator(process_index=process_index, process_count=process_count)


def _window_ids(batch: np.ndarray) -> list[int]:
  assert all(row[0] % SEQ == 0 for row in batch)
  return [int(row[0]) // SEQ for row in batch]


def test_windows_pack_exactly_and_epochs_are_permutations():
  tokens = _stream()
  it = _iterator(tokens, seq_len=SEQ, global_batch_size=8, seed=3)
  batches = [next(it) for _ in range(-(-3 * N_WIN // 8))]
  assert all(b.shape == (8, SEQ + 1) and b.dtype == np.int32 for b in batches)
  order = [w for b in batches for w in _window_ids(b)]
  rows = {w: row for b in batches for w, row in zip(_window_ids(b), b)}
  for row in rows.values():
    np.testing.assert_array_equal(row[1:], tokens[row[0] + 1: row[0] + SEQ + 1])  # targets = shift
  inputs = np.concatenate([rows[w][:-1] for w in range(N_WIN)])
  np.testing.assert_array_equal(inputs, tokens[:N_WIN * SEQ])
  epochs = [order[e * N_WIN:(e + 1) * N_WIN] for e in range(3)]
  for epoch in epochs:
    assert sorted(epoch) == list(range(N_WIN))
  assert epochs[0] != epochs[1] != epochs[2]
  assert epochs[0] != list(range(N_WIN))


def test_process_shards_concatenate_to_global_batch():
  tokens = _stream()
  kw = dict(seq_len=SEQ, global_batch_size=8, seed=0)
  full = _iterator(tokens, **kw)
  shards = [_iterator(tokens, process_index=p, process_count=2, **kw) for p in range(2)]
  for _ in range(20):
    parts = [next(s) for s in shards]
    assert parts[0].shape == (4, SEQ + 1)
    np.testing.assert_array_equal(np.concatenate(parts), next(full))
    assert not set(_window_ids(parts[0])) & set(_window_ids(parts[1]))


def test_resume_from_state_is_exact():
  tokens = _stream()
  kw = dict(seq_len=SEQ, global_batch_size=6, seed=11)
  it = _iterator(tokens, **kw)
  for _ in range(5):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # goes into the checkpoint as JSON
  expected = [next(it) for _ in range(30)]  # Crosses an epoch boundary.
  fresh = _iterator(tokens, **kw)
  fresh.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(fresh), want)


def test_seeds_give_different_orders():
  tokens = _stream()
  first = {s: next(_iterator(tokens, seq_len=SEQ, global_batch_size=16, seed=s))
           for s in (0, 1)}
  assert _window_ids(first[0]) != _window_ids(first[1])
  again = next(_iterator(tokens, seq_len=SEQ, global_batch_size=16, seed=0))
  np.testing.assert_array_equal(again, first[0])


def test_train_iterator_errors():
  with pytest.raises(ValueError, match="process_count 3"):
    _iterator(_stream(), seq_len=SEQ, global_batch_size=8, seed=0, process_count=3)
  with pytest.raises(ValueError, match="fewer than one window"):
    _iterator(np.arange(SEQ, dtype=np.uint16), seq_len=SEQ, global_batch_size=1, seed=0)
  it = _iterator(np.arange(SEQ + 1, dtype=np.uint16), seq_len=SEQ, global_batch_size=2,
                seed=0)
  np.testing.assert_array_equal(next(it), np.stack([np.arange(SEQ + 1)] * 2))


def test_eval_batches_in_order():
  tokens = _stream()
  batches = list(pipeline.eval_batches(tokens, seq_len=SEQ, batch_size=40))
  assert [len(b) for b in batches] == [40, 40, 40, 22]
  assert [w for b in batches for w in _window_ids(b)] == list(range(N_WIN))
  assert all(b.dtype == np.int32 and b.shape[1] == SEQ + 1 for b in batches)
  assert len(list(pipeline.eval_batches(tokens, seq_len=SEQ, batch_size=40, drop_remainder=True))) == 3
  assert len(list(pipeline.eval_batches(tokens, seq_len=SEQ, batch_size=40, max_batches=2))) == 2


def test_unigram_cross_entropy_by_hand():
  train = np.array([0, 0, 1], np.uint16)
  evals = np.array([0, 2], np.uint16)
  # Add-one counts over V=3: [3, 2, 1] / 6.
  want = -(math.log(3 / 6) + math.log(1 / 6)) / 2
  assert pipeline.unigram_cross_entropy(train, evals, 3) == pytest.approx(want, rel=1e-12)
  with pytest.raises(ValueError):
    pipeline.unigram_cross_entropy(train, np.array([5], np.uint16), 3)


# ---------------------------------------------------------------- corpus


def test_prepare_corpus_end_to_end_and_reuse(corpus_dir, tmp_path):
  cfg = corpus.DataConfig(paths=(corpus_dir,), data_dir=str(tmp_path), vocab_size=VOCAB,
                          validation_fraction=0.2)
  c = corpus.prepare_corpus(cfg)
  assert c.tokenizer.vocab_size == VOCAB
  assert len(c.train_tokens) > 10 * len(c.valid_tokens) / 4 > 0
  assert c.train_tokens[-1] == c.valid_tokens[-1] == c.tokenizer.eot_id
  assert os.path.join(corpus_dir, "prose", "latin1.txt") in c.skipped_files
  paths = (c.tokenizer_path, c.train_tokens_path, c.valid_tokens_path)
  mtimes = [os.stat(p).st_mtime_ns for p in paths]
  c2 = corpus.prepare_corpus(cfg)
  assert [os.stat(p).st_mtime_ns for p in paths] == mtimes
  np.testing.assert_array_equal(c2.train_tokens, c.train_tokens)
  with pytest.raises(ValueError, match="missing_dir"):
    corpus.prepare_corpus(dataclasses.replace(cfg, paths=(str(tmp_path / "missing_dir"),)))


def test_prepare_corpus_single_file_holds_out_tail(corpus_dir, tmp_path):
  path = os.path.join(corpus_dir, "code", "shlex.py")
  c = corpus.prepare_corpus(corpus.DataConfig(paths=(path,), data_dir=str(tmp_path), vocab_size=VOCAB,
                                              validation_fraction=0.1))
  full = token_store.load_tokens(c.train_tokens_path)
  assert len(c.valid_tokens) == int(len(full) * 0.1) > 0
  np.testing.assert_array_equal(np.concatenate([c.train_tokens, c.valid_tokens]), full)


def test_prepare_corpus_from_concurrent_processes(corpus_dir, tmp_path):
  script = textwrap.dedent(f"""
      from absl import logging
      from gpt3_jax.data import corpus
      logging.set_verbosity(logging.INFO)
      c = corpus.prepare_corpus(corpus.DataConfig(paths=({corpus_dir!r},), data_dir={str(tmp_path)!r},
                                                  vocab_size={VOCAB}))
      print(c.tokenizer.fingerprint, len(c.train_tokens), c.train_tokens_path)
  """)
  env = dict(os.environ, PYTHONPATH=REPO_ROOT)
  procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for _ in range(2)]
  outs = [p.communicate(timeout=120) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
  lines = [o[0].strip().splitlines()[-1] for o in outs]
  assert lines[0] == lines[1]
  assert len(os.listdir(os.path.join(str(tmp_path), "tokenizers"))) == 1
  # Exactly one process prepared; the other waited on the lock, then reused everything.
  assert sorted("Reusing tokenizer" in o[1] for o in outs) == [False, True]
  assert sorted("Reusing prepared text files" in o[1] for o in outs) == [False, True]
