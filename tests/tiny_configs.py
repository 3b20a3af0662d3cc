"""Configs shared by the training tests: a tiny alternating-attention model on a tiny real corpus."""

from gpt3_jax.data.corpus import DataConfig
from gpt3_jax.model.config import ModelConfig
from gpt3_jax.parallel.mesh import MeshConfig
from gpt3_jax.training.optimizer import OptimizerConfig
from gpt3_jax.training.config import TrainConfig

# attention_block=8: the training tests run the block-sparse attention (4 query blocks, the band skips some).
MODEL = ModelConfig(n_ctx=32, d_model=32, n_layers=2, n_heads=2, d_head=16, attention_pattern="alternating",
                    local_window=8, attention_block=8)
OPTIMIZER = OptimizerConfig(peak_learning_rate=3e-3, warmup_tokens=256, decay_tokens=4096)


def data(text_dir: str, data_dir: str) -> DataConfig:
  return DataConfig(paths=(text_dir,), data_dir=data_dir, vocab_size=512, validation_fraction=0.1)


def train(**changes) -> TrainConfig:
  base = dict(global_batch_size=8, train_steps=4, log_every=1, eval_every=4, eval_batches=2, checkpoint_every=2,
              sample_tokens=0, peak_flops_per_device=1e11)
  base.update(changes)
  return TrainConfig(**base)


MESH = MeshConfig(shape=(-1, 1, 1))
