"""A complete Hugging Face GPT-2 directory made offline: a byte-level BPE trained with `tokenizers` on local text
and a random-weight GPT2LMHeadModel with that vocabulary, saved with save_pretrained."""

import os

EOT = "<|endoftext|>"


def train_byte_level_bpe(texts, vocab_size=300):
  """A GPT-2-style tokenizer: byte-level pre-tokenizer without a prefix space, <|endoftext|> special."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(texts, trainer)
  return tok


def save_tokenizer(tok, directory):
  """tokenizer.json + tokenizer_config.json + special_tokens_map.json, as transformers writes them."""
  import transformers
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, bos_token=EOT, unk_token=EOT)
  fast.save_pretrained(directory)
  return fast


def make_hf_gpt2_dir(directory, texts, *, n_positions=32, n_embd=32, n_layer=2, n_head=4, seed=0):
  """Writes the tokenizer and a random GPT-2 (non-zero biases and LayerNorm parameters) into `directory`."""
  import torch
  import transformers
  os.makedirs(directory, exist_ok=True)
  tok = train_byte_level_bpe(texts)
  save_tokenizer(tok, directory)
  eot = tok.token_to_id(EOT)
  torch.manual_seed(seed)
  config = transformers.GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=n_positions, n_embd=n_embd,
                                   n_layer=n_layer, n_head=n_head, bos_token_id=eot, eos_token_id=eot)
  model = transformers.GPT2LMHeadModel(config)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias") or "ln_" in name:
        p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(directory)
  return directory


def stdlib_texts(limit=40):
  """Some real text: lines of the running interpreter's json package."""
  import sysconfig
  root = os.path.join(sysconfig.get_paths()["stdlib"], "json")
  texts = []
  for name in sorted(os.listdir(root)):
    if name.endswith(".py"):
      with open(os.path.join(root, name), encoding="utf-8") as f:
        texts.append(f.read())
  return texts[:limit]
