"""Tests of data sources: token files (nanoGPT, llm.c), TFDS catalog datasets, JSON Lines, mixtures, bad data."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
import tensorflow_datasets as tfds

from gpt3_jax.data import corpus
from gpt3_jax.data import export_tokens
from gpt3_jax.data import sources
from gpt3_jax.data import token_files
from gpt3_jax.data import tokenizer as tokenizer_lib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 400
SEQ = 8


def _write(path, data) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data.encode() if isinstance(data, str) else data)
  return str(path)


# ---------------------------------------------------------------- token files


def test_nanogpt_file_is_mapped_in_place(tmp_path):
  ids = np.random.default_rng(0).integers(0, 50257, 1000).astype(np.uint16)
  path = _write(tmp_path / "train.bin", ids.tobytes())
  tokens = token_files.open_token_file(path, vocab_size=50257)
  assert isinstance(tokens, np.memmap) and tokens.offset == 0 and not tokens.flags.writeable
  np.testing.assert_array_equal(tokens, ids)
  assert token_files.detect_format(path) == "nanogpt"


def test_llmc_file_round_trip_and_header(tmp_path):
  ids = np.arange(5000, dtype=np.uint16) % 700
  path = str(tmp_path / "val.bin")
  token_files.write_token_file(ids, path, token_format="llmc")
  header = np.fromfile(path, dtype="<i4", count=256)
  assert (header[0], header[1], header[2]) == (20240520, 1, 5000) and not header[3:].any()
  assert os.path.getsize(path) == 1024 + 2 * 5000
  tokens = token_files.open_token_file(path)
  assert token_files.detect_format(path) == "llmc" and tokens.offset == 1024
  np.testing.assert_array_equal(tokens, ids)
  wide = np.array([1, 70000, 3], np.uint32)  # Does not fit uint16: version 2.
  token_files.write_token_file(wide, path, token_format="llmc")
  np.testing.assert_array_equal(token_files.open_token_file(path), wide)


def test_token_file_errors_name_the_file(tmp_path):
  odd = _write(tmp_path / "odd.bin", b"\x01\x00\x02")
  with pytest.raises(ValueError, match=r"odd\.bin has 3 bytes, not a multiple of 2"):
    token_files.open_token_file(odd)
  big = _write(tmp_path / "big.bin", np.array([1, 2, 900, 3], np.uint16).tobytes())
  with pytest.raises(ValueError, match=r"big\.bin holds id 900 at position 2.*512"):
    token_files.open_token_file(big, vocab_size=512)
  path = str(tmp_path / "cut.bin")
  token_files.write_token_file(np.arange(10, dtype=np.uint16), path, token_format="llmc")
  with open(path, "ab") as f:
    f.write(b"\x00\x00")
  with pytest.raises(ValueError, match=r"cut\.bin.*header says 10 tokens"):
    token_files.open_token_file(path)
  with pytest.raises(ValueError, match=r"missing\.bin does not exist"):
    token_files.open_token_file(str(tmp_path / "missing.bin"))
  with pytest.raises(ValueError, match=r"big\.bin has no llm.c header"):
    token_files.open_token_file(big, token_format="llmc")


# ---------------------------------------------------------------- a TFDS catalog-style dataset


class TinyWeb(tfds.core.GeneratorBasedBuilder):
  """A tiny stand-in for c4/en: config 'en', a 'text' feature, train and validation splits."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="en")]
  code_path = None

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "text": tfds.features.Text(), "url": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(0, 60), "validation": self._generate_examples(60, 70)}

  def _generate_examples(self, start, stop):
    for i in range(start, stop):
      yield i, {"text": f"Web page {i}:\n" + _code_chunks()[i % 20], "url": f"u{i}"}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory) -> str:
  directory = str(tmp_path_factory.mktemp("tfds"))
  TinyWeb(data_dir=directory, config="en", file_format="array_record").download_and_prepare()
  return directory


@pytest.fixture(scope="module")
def jsonl_dir(tmp_path_factory) -> str:
  root = tmp_path_factory.mktemp("jsonl")
  lines = [json.dumps({"text": f"Document {i}, ünïcödé {i}.\n" * 3, "id": i}) for i in range(30)]
  lines += ["{not json", json.dumps({"body": "no text field"}), json.dumps({"text": "   "}),
            json.dumps({"text": 5}), "", json.dumps({"text": "x" * 5000})]
  _write(root / "a" / "part0.jsonl", "\n".join(lines) + "\n")
  _write(root / "a" / "bad_utf8.jsonl", b'{"text": "caf\xe9"}\n' + json.dumps({"text": "ok doc"}).encode())
  os.makedirs(root / "b")
  with gzip.open(root / "b" / "part1.jsonl.gz", "wt") as f:
    f.write("\n".join(json.dumps({"text": chunk}) for chunk in _code_chunks()))
  return str(root)


def _code_chunks() -> list[str]:
  """20 documents of real code (varied enough to train a few hundred BPE pieces)."""
  with open(os.path.join(sysconfig.get_paths()["stdlib"], "textwrap.py"), encoding="utf-8") as f:
    lines = f.read().splitlines(keepends=True)
  return ["".join(lines[i::20]) for i in range(20)]


def _cfg(tmp_path, srcs, weights=(), **kw):
  return corpus.DataConfig(sources=tuple(srcs), weights=tuple(weights), data_dir=str(tmp_path / "cache"),
                           vocab_size=VOCAB, validation_fraction=0.1, **kw)


def test_tfds_source_reads_the_prepared_catalog_dataset(tfds_dir, tmp_path):
  web = sources.SourceConfig(name="web", kind="tfds", tfds_name="tiny_web/en:1.0.0", tfds_data_dir=tfds_dir)
  c = corpus.prepare_corpus(_cfg(tmp_path, [web]))
  src = tfds.data_source("tiny_web/en", split="train", data_dir=tfds_dir)
  expected = []
  for i in range(len(src)):
    expected += c.tokenizer.encode(src[i]["text"].decode()) + [c.tokenizer.eot_id]
  np.testing.assert_array_equal(c.train_tokens, expected)
  assert int((c.valid_tokens == c.tokenizer.eot_id).sum()) == 10
  # Split slicing: hold out a slice of train instead of a split.
  sliced = sources.SourceConfig(name="web", tfds_name="tiny_web/en", tfds_data_dir=tfds_dir,
                                train_split="train[:80%]", validation_split="train[80%:]")
  c2 = corpus.prepare_corpus(_cfg(tmp_path, [sliced]))
  assert int((c2.train_tokens == c2.tokenizer.eot_id).sum()) == 48
  assert int((c2.valid_tokens == c2.tokenizer.eot_id).sum()) == 12


def test_tfds_source_errors(tfds_dir, tmp_path):
  with pytest.raises(ValueError, match="not prepared.*tfds build tiny_web/en.*array_record"):
    corpus.prepare_corpus(_cfg(tmp_path, [sources.SourceConfig(
        name="w", tfds_name="tiny_web/en", tfds_data_dir=str(tmp_path / "empty"))]))
  with pytest.raises(ValueError, match=r"no feature 'content'.*\['text', 'url'\]"):
    corpus.prepare_corpus(_cfg(tmp_path, [sources.SourceConfig(
        name="w", tfds_name="tiny_web/en", tfds_data_dir=tfds_dir, text_field="content")]))


# ---------------------------------------------------------------- local JSON Lines and bad data


def test_jsonl_documents_and_skipped_lines_are_counted(jsonl_dir, tmp_path):
  src = sources.SourceConfig(name="docs", paths=(jsonl_dir,), max_document_bytes=4096)
  c = corpus.prepare_corpus(_cfg(tmp_path, [src]))
  text = c.tokenizer.decode(np.concatenate([c.train_tokens, c.valid_tokens]))
  docs = text.split(tokenizer_lib.EOT_PIECE)[:-1]
  want = ([f"Document {i}, ünïcödé {i}.\n" * 3 for i in range(30)] + _code_chunks()
          + ["ok doc"])
  assert sorted(docs) == sorted(want)
  skipped = c.streams[0].skipped
  assert skipped == {"invalid_json": 1, "no_text_field": 2, "empty": 1, "too_large": 1, "invalid_utf8": 1}
  metrics = c.mixture(seq_len=SEQ, global_batch_size=4, seed=0).metrics(0)
  assert metrics["data/docs/skipped_documents"] == 6


def test_bad_inputs_are_clear_errors(tmp_path, jsonl_dir):
  big = _write(tmp_path / "big" / "huge.txt", "a" * 2000)
  with pytest.raises(ValueError, match=r"huge\.txt is 2000 bytes, over max_document_bytes=1000"):
    corpus.prepare_corpus(_cfg(tmp_path, [sources.SourceConfig(name="t", paths=(big,),
                                                               max_document_bytes=1000)]))
  for bad in (str(tmp_path / "nowhere"), str(tmp_path / "*.jsonl")):
    with pytest.raises(ValueError, match=bad.replace("*", r"\*")):
      corpus.check_sources(_cfg(tmp_path, [sources.SourceConfig(name="t", paths=(bad,))]))
  with pytest.raises(ValueError, match=r"token file .*nope\.bin does not exist"):
    corpus.check_sources(_cfg(tmp_path, [sources.SourceConfig(name="t", train_path=str(tmp_path / "nope.bin"))]))
  src = sources.SourceConfig(name="x", paths=(jsonl_dir,))
  with pytest.raises(ValueError, match="weights has 2 entries for 1 sources"):
    corpus.check_sources(_cfg(tmp_path, [src], weights=(1, 2)))
  with pytest.raises(ValueError, match="duplicate names"):
    corpus.check_sources(_cfg(tmp_path, [src, src]))
  with pytest.raises(ValueError, match="unknown kind 'web'"):
    corpus.check_sources(_cfg(tmp_path, [sources.SourceConfig(name="t", kind="web")]))


# ---------------------------------------------------------------- mixtures of every kind


def test_mixture_of_text_tfds_and_token_files_resumes_exactly(jsonl_dir, tfds_dir, tmp_path):
  docs = sources.SourceConfig(name="docs", paths=(jsonl_dir,))
  web = sources.SourceConfig(name="web", tfds_name="tiny_web/en", tfds_data_dir=tfds_dir)
  first = corpus.prepare_corpus(_cfg(tmp_path, [docs, web]))
  # Export the docs stream in the llm.c layout, then train on it as a token-file source.
  written = export_tokens.export(first, str(tmp_path / "export"), token_format="llmc")
  assert sorted(written) == ["docs/train.bin", "docs/val.bin", "web/train.bin", "web/val.bin"]
  np.testing.assert_array_equal(token_files.open_token_file(written["web/train.bin"]), first.streams[1].train_tokens)
  bins = sources.SourceConfig(name="bins", train_path=written["docs/train.bin"],
                              validation_path=written["docs/val.bin"])
  cfg = _cfg(tmp_path, [docs, web, bins], weights=(0.5, 0.3, 0.2), tokenizer_path=first.tokenizer_path)
  c = corpus.prepare_corpus(cfg)
  assert [s.name for s in c.streams] == ["docs", "web", "bins"]
  np.testing.assert_array_equal(c.streams[2].train_tokens, c.streams[0].train_tokens)
  np.testing.assert_array_equal(c.train_tokens, c.streams[0].train_tokens)  # First source: eval, unigram.
  assert c.weights == pytest.approx((0.5, 0.3, 0.2)) and c.vocab_size == VOCAB

  kw = dict(seq_len=SEQ, global_batch_size=6, seed=1)
  it = c.train_iterator(**kw)
  for _ in range(4):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it) for _ in range(12)]
  restored = corpus.prepare_corpus(cfg).train_iterator(process_index=1, process_count=2, **kw)
  restored.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(restored), want[3:])
  metrics = c.mixture(**kw).metrics(16)
  assert sum(metrics[f"data/{n}/tokens"] for n in ("docs", "web", "bins")) == 16 * 6 * SEQ
  assert metrics["data/bins/epochs"] > 0


def test_token_files_alone_need_no_tokenizer(tmp_path):
  ids = (np.arange(4000) * 37 % 1000).astype(np.uint16)
  train = _write(tmp_path / "nano" / "train.bin", ids.tobytes())
  c = corpus.prepare_corpus(corpus.DataConfig(
      sources=(sources.SourceConfig(name="owt", train_path=train, token_format="nanogpt"),),
      data_dir=str(tmp_path / "cache"), vocab_size=1000, validation_fraction=0.1))
  assert c.tokenizer is None and c.tokenizer_path is None and c.vocab_size == 1000
  np.testing.assert_array_equal(np.concatenate([c.train_tokens, c.valid_tokens]), ids)
  assert len(c.valid_tokens) == 400
  with pytest.raises(ValueError, match=r"train\.bin holds id 999 .*vocabulary size 999; set DataConfig.vocab_size"):
    corpus.prepare_corpus(corpus.DataConfig(
        sources=(sources.SourceConfig(name="owt", train_path=train),), data_dir=str(tmp_path / "cache"),
        vocab_size=999))


def test_gin_mixture_config_parses_to_table_2_2():
  from gpt3_jax import configs
  bundle = configs.parse_and_build(["gin_configs/models/tiny.gin", "gin_configs/data/gpt3_mixture.gin"], [])
  cfg = bundle.data
  names = [s.name for s in cfg.sources]
  assert names == ["common_crawl", "webtext2", "books1", "books2", "wikipedia"]
  _, weights = corpus.resolved_sources(cfg)
  np.testing.assert_allclose(weights, np.array([60, 22, 8, 8, 3]) / 101)
  kinds = [s.resolved_kind() for s in cfg.sources]
  assert kinds == ["tfds", "text_files", "text_files", "token_files", "tfds"]
  assert cfg.sources[0].tfds_name == "c4/en:3.1.0"
  nano = configs.parse_and_build(["gin_configs/models/tiny.gin", "gin_configs/data/nanogpt_tokens.gin"], []).data
  assert nano.sources[0].resolved_kind() == "token_files" and nano.vocab_size == 50257


def test_tokenizer_cli_trains_on_configured_sources(jsonl_dir, tmp_path):
  out = str(tmp_path / "t.model")
  proc = subprocess.run(
      [sys.executable, "-m", "gpt3_jax.data.tokenizer", f"--paths={jsonl_dir}", f"--model_path={out}",
       f"--data_dir={tmp_path / 'cache'}", "--vocab_size=400", "--character_coverage=0.9995",
       "--special_tokens=<|fim_prefix|>,<|fim_suffix|>"],
      env=dict(os.environ, PYTHONPATH=REPO_ROOT), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  tok = tokenizer_lib.Tokenizer.load(out)
  assert tok.vocab_size == 400
  ids = tok.encode("a<|fim_prefix|>b")
  assert tok.decode(ids) == "a<|fim_prefix|>b"
  assert tok._sp.id_to_piece(ids[1]) == "<|fim_prefix|>"  # pylint: disable=protected-access


def test_export_cli_with_tokenize_workers_writes_nanogpt_files(jsonl_dir, tmp_path):
  out = tmp_path / "out"
  bindings = [f"DataConfig.paths=({jsonl_dir!r},)", f"DataConfig.data_dir={str(tmp_path / 'cache')!r}",
              "DataConfig.vocab_size=400", "DataConfig.validation_fraction=0.1"]
  proc = subprocess.run(
      [sys.executable, "-m", "gpt3_jax.data.export_tokens", f"--out_dir={out}", "--tokenize_workers=2",
       *[f"--gin={b}" for b in bindings]],
      env=dict(os.environ, PYTHONPATH=REPO_ROOT), capture_output=True, text=True, timeout=240)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "text/train.bin" in proc.stdout
  tok = tokenizer_lib.Tokenizer.load(str(out / "tokenizer.model"))
  train = token_files.open_token_file(str(out / "text" / "train.bin"), token_format="nanogpt")
  # Same stream as in-process thread tokenization of the same prepared documents.
  c = corpus.prepare_corpus(corpus.DataConfig(paths=(jsonl_dir,), data_dir=str(tmp_path / "cache2"),
                                              vocab_size=400, validation_fraction=0.1,
                                              tokenizer_path=str(out / "tokenizer.model")))
  np.testing.assert_array_equal(train, c.train_tokens)
  assert int((train == tok.eot_id).sum()) == 21  # bad_utf8.jsonl's good line + the 20 gzipped documents.


def test_the_token_stream_does_not_depend_on_where_the_corpus_is(tmp_path):
  """The same files under two different roots give the same train and validation streams, in the same order
  (TFDS orders examples by a hash of their keys: keys are relative, not absolute paths)."""
  import shutil
  import sysconfig
  streams = []
  for root in ("a/deep/place", "elsewhere"):
    text = tmp_path / root / "corpus"
    shutil.copytree(os.path.join(sysconfig.get_paths()["stdlib"], "json"), text / "json",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    prepared = corpus.prepare_corpus(corpus.DataConfig(paths=(str(text),), data_dir=str(tmp_path / root / "data"),
                                                       vocab_size=512, validation_fraction=0.2))
    streams.append((np.asarray(prepared.train_tokens), np.asarray(prepared.valid_tokens)))
  np.testing.assert_array_equal(streams[0][0], streams[1][0])
  np.testing.assert_array_equal(streams[0][1], streams[1][1])
