"""--mode=finetune: fine-tune TrainConfig.init_from (a training run or a Hugging Face import) on FinetuneConfig's
prompt / completion examples in --workdir, with the training loop's guarantees (resume, guards, hooks); then
print the validation loss on the completions, the unigram baseline and a sample. docs/finetuning.md."""

from __future__ import annotations

import dataclasses


def model_config(base_cfg, bundle, class_labels=()):
  """The base model's config; gin may change what does not change the base's parameters (dtype, remat, attention
  implementation, ...) and add LoRA (ModelConfig.lora_*): another architecture field bound to another value is a
  one-line error naming it. A classification (`class_labels`, FinetuneConfig.task = 'classify') adds the head;
  a base that is a classifier already must have the same labels."""
  from gpt3_jax.training.config import ARCHITECTURE_FIELDS
  overrides = {}
  for name in bundle.model_bound:
    value, base = getattr(bundle.model, name), getattr(base_cfg, name)
    if name in ARCHITECTURE_FIELDS and not name.startswith("lora_") and value != base:
      raise ValueError(f"ModelConfig.{name}={value!r} but the base model {bundle.train.init_from!r} has {base!r}; "
                       f"drop the binding (a fine-tune takes the base's architecture)")
    overrides[name] = value
  overrides.pop("class_labels", None)  # from the data (FinetuneConfig), not from ModelConfig
  if base_cfg.class_labels and tuple(class_labels) != base_cfg.class_labels:
    raise ValueError(f"the base model {bundle.train.init_from!r} classifies {list(base_cfg.class_labels)} but the "
                     f"fine-tuning labels are {list(class_labels) or 'none (generation)'}; set FinetuneConfig.labels "
                     f"to the base's or start from a plain model")
  return dataclasses.replace(base_cfg, **overrides, class_labels=tuple(class_labels))


def run(bundle, workdir: str) -> None:
  from gpt3_jax import run_summary
  from gpt3_jax import workdir as workdir_lib
  from gpt3_jax.finetune.sft_data import SFTData
  from gpt3_jax.training import trainer
  if not bundle.train.init_from:
    raise ValueError("--mode=finetune needs TrainConfig.init_from = '<the workdir of a training run or a Hugging "
                     "Face import>'")
  base = workdir_lib.load_model(bundle.train.init_from)
  data = SFTData(bundle.finetune, tokenizer_path=base.tokenizer_path or "", vocab_size=base.cfg.vocab_size)
  result = trainer.train(model_config(base.cfg, bundle, data.labels()), data, bundle.optimizer, bundle.mesh,
                         bundle.train, workdir, operative_config=bundle.operative_config)
  run_summary.print_summary(result, bundle.train)
