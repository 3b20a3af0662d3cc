r"""Writes a prepared corpus's token streams in the nanoGPT or llm.c layout: tokenize once, train many times.

  python -m gpt3_jax.data.export_tokens --gin_file=gin_configs/data/local_files.gin --out_dir=/data/mine \
      --format=llmc

For each source it writes OUT_DIR/<source>/{train,val}.bin (plus the SentencePiece model as
OUT_DIR/tokenizer.model). 'nanogpt': flat ids (uint16 when the vocabulary fits, else uint32); 'llmc': the
256-int32 header, then the ids. Our own token files already are the nanoGPT layout: they are hard-linked
when possible (no copy). Point a 'token_files' SourceConfig at the output to train from it directly.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Sequence

from absl import logging

from gpt3_jax.data import corpus as corpus_lib
from gpt3_jax.data import token_files


def _link_or_write(tokens, src_path: str, dst_path: str, token_format: str) -> None:
  whole_file = token_format == "nanogpt" and os.path.getsize(src_path) == tokens.nbytes
  if whole_file:
    if os.path.exists(dst_path):
      os.remove(dst_path)
    try:
      os.link(src_path, dst_path)
    except OSError:
      shutil.copyfile(src_path, dst_path)
  else:  # A held-out head/tail of a file, or a header to add.
    token_files.write_token_file(tokens, dst_path, token_format=token_format)


def export(corpus: corpus_lib.Corpus, out_dir: str, *, token_format: str = "nanogpt") -> dict[str, str]:
  """Writes every source's train.bin / val.bin under out_dir/<source>/; returns {relative path: path}."""
  written = {}
  for s in corpus.streams:
    directory = os.path.join(out_dir, s.name)
    os.makedirs(directory, exist_ok=True)
    for split, tokens, path in (("train", s.train_tokens, s.train_tokens_path),
                                ("val", s.valid_tokens, s.valid_tokens_path)):
      dst = os.path.join(directory, f"{split}.bin")
      _link_or_write(tokens, path, dst, token_format)
      written[f"{s.name}/{split}.bin"] = dst
      logging.info("Wrote %d tokens to %s", len(tokens), dst)
  if corpus.tokenizer_path:
    shutil.copyfile(corpus.tokenizer_path, os.path.join(out_dir, "tokenizer.model"))
  return written


def _main(argv: Sequence[str]) -> None:
  del argv
  from gpt3_jax import configs  # pylint: disable=g-import-not-at-top
  data_cfg = configs.parse_and_build(FLAGS.gin_file, FLAGS.gin).data
  if FLAGS.tokenize_workers:
    data_cfg = dataclasses.replace(data_cfg, tokenize_workers=FLAGS.tokenize_workers)
  corpus = corpus_lib.prepare_corpus(data_cfg)
  for name, path in export(corpus, FLAGS.out_dir, token_format=FLAGS.format).items():
    print(name, path)


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_multi_string("gin_file", [], "gin files configuring DataConfig (default: the stdlib corpus).")
  flags.DEFINE_multi_string("gin", [], "Extra gin bindings, e.g. DataConfig.vocab_size=4096.")
  flags.DEFINE_string("out_dir", None, "Output directory.", required=True)
  flags.DEFINE_integer("tokenize_workers", 0, "grain worker processes for tokenization (0: threads).")
  flags.DEFINE_enum("format", "nanogpt", ["nanogpt", "llmc"], "Output layout.")
  FLAGS = flags.FLAGS
  from gpt3_jax import errors  # pylint: disable=g-import-not-at-top
  app.run(errors.one_line_errors(_main))
