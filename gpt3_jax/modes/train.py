"""--mode=train: train or resume in --workdir, then print the validation loss, the unigram baseline and a sample."""

from __future__ import annotations


def run(bundle, workdir: str) -> None:
  from gpt3_jax import run_summary
  from gpt3_jax.training import trainer
  bundle.check_vocab()
  result = trainer.train(bundle.model, bundle.data, bundle.optimizer, bundle.mesh, bundle.train, workdir,
                         operative_config=bundle.operative_config)
  run_summary.print_summary(result, bundle.train)
