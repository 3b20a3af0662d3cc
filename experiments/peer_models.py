"""The shapes peer_benchmark.py times, and the PyTorch model it (and torch_train_loop.py) trains on them.

No flags here, so that each benchmark script can import it without the other's flags.
"""

from __future__ import annotations

import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class Shape:
  n_layers: int
  d_model: int
  n_heads: int
  vocab: int
  seq: int
  batch: int


SHAPES = {"124m": Shape(12, 768, 12, 50257, 256, 4), "0.8m": Shape(4, 128, 4, 65, 64, 12),
          "tiny": Shape(4, 256, 8, 4096, 256, 8), "quickstart": Shape(4, 128, 4, 4096, 256, 8)}


def pytorch_model(shape: Shape, lr: float = 1e-4):
  """Hugging Face's GPT2LMHeadModel of `shape` (no dropout, sdpa attention) in training mode, and its AdamW."""
  import torch
  import transformers
  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count())
  config = transformers.GPT2Config(vocab_size=shape.vocab, n_positions=shape.seq, n_embd=shape.d_model,
                                   n_layer=shape.n_layers, n_head=shape.n_heads, resid_pdrop=0.0, embd_pdrop=0.0,
                                   attn_pdrop=0.0, bos_token_id=shape.vocab - 1, eos_token_id=shape.vocab - 1)
  model = transformers.GPT2LMHeadModel(config).train()
  return model, torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
