"""gin at the composition boundary: the config dataclasses are gin-configurable here, nowhere else.

gin files bind their fields (`ModelConfig.d_model = 768`); `parse_and_build` applies files then bindings (later
ones win) and constructs the bundle. gin files may `include` others by path relative to the repository root.
Each bundle carries the operative config text of its own parse, so a process that parses several runs (a
notebook, a sweep driver) writes each run's own config.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Sequence

import gin

from gpt3_jax import config_types
from gpt3_jax.errors import one_line

from gpt3_jax.data.corpus import DataConfig
from gpt3_jax.data.sources import SourceConfig
from gpt3_jax.finetune.config import FinetuneConfig
from gpt3_jax.model.config import ModelConfig
from gpt3_jax.parallel.mesh import MeshConfig
from gpt3_jax.sweep.config import SweepConfig
from gpt3_jax.training.optimizer import OptimizerConfig
from gpt3_jax.training.config import TrainConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_CLASSES = {cls.__name__: cls for cls in (ModelConfig, DataConfig, OptimizerConfig, MeshConfig, TrainConfig,
                                                 FinetuneConfig, SweepConfig)}
_CONFIGURABLES = {name: gin.external_configurable(cls, name) for name, cls in CONFIG_CLASSES.items()}
# Nested inside DataConfig.sources (scoped: `DataConfig.sources = (@web/SourceConfig(), ...)`), not built alone.
gin.external_configurable(SourceConfig, "SourceConfig")


@dataclasses.dataclass(frozen=True)
class ConfigBundle:
  model: ModelConfig
  data: DataConfig
  optimizer: OptimizerConfig
  mesh: MeshConfig
  train: TrainConfig
  finetune: FinetuneConfig = FinetuneConfig()
  sweep: SweepConfig = SweepConfig()
  model_bound: tuple = ()  # the ModelConfig fields set in gin (a fine-tune takes the rest from its base)
  operative_config: str = ""  # gin's operative config of this parse: every value the configs were built with

  @property
  def model_vocab_bound(self) -> bool:
    """ModelConfig.vocab_size was set in gin (else the tokenizer decides)."""
    return "vocab_size" in self.model_bound

  def check_vocab(self) -> None:
    """For training: a vocabulary bound on the model must be the one the tokenizer is trained to."""
    if self.model_vocab_bound and self.model.vocab_size != self.data.vocab_size:
      raise ValueError(f"ModelConfig.vocab_size={self.model.vocab_size} differs from the tokenizer's "
                       f"DataConfig.vocab_size={self.data.vocab_size}; bind both to the same value (or drop the "
                       f"ModelConfig binding to take the tokenizer's)")


def _quiet_search(record: logging.LogRecord) -> bool:
  """Drops gin's 'Path not found' errors: it logs one for every search prefix an include is not under before it
  finds the file under another (ours: the working directory, then the repository root)."""
  return not (record.levelno == logging.ERROR and str(record.msg).startswith("Path not found"))


def parse_and_build(gin_files: Sequence[str], bindings: Sequence[str]) -> ConfigBundle:
  """Parses gin files and bindings and builds the configs; any problem is a one-line ValueError."""
  if _quiet_search not in logging.getLogger().filters:
    logging.getLogger().addFilter(_quiet_search)
  gin.clear_config()
  for root in (os.getcwd(), REPO_ROOT):
    gin.add_config_file_search_path(root)
  for path in gin_files:
    if not os.path.isfile(path) and not os.path.isfile(os.path.join(REPO_ROOT, path)):
      raise ValueError(f"gin file {path!r} does not exist; pass a path such as gin_configs/models/tiny.gin")
  try:
    files = [p if os.path.isfile(p) else os.path.join(REPO_ROOT, p) for p in gin_files]
    gin.parse_config_files_and_bindings(files, bindings, finalize_config=False)
  except (ValueError, OSError, SyntaxError, KeyError) as e:
    raise ValueError(f"bad gin configuration: {one_line(e)}; check the names in your --gin_file / "
                     f"--gin.NAME=VALUE flags") from None
  for name, cls in CONFIG_CLASSES.items():
    config_types.check_bound(cls, name, gin.query_parameter)
  try:
    built = {name: make() for name, make in _CONFIGURABLES.items()}
  except ValueError as e:  # the configs' own checks name the setting and a valid value
    raise ValueError(one_line(e)) from None
  except TypeError as e:
    raise ValueError(f"bad configuration: {one_line(e)}") from None
  for config in built.values():
    config_types.check_types(config)
  bound = tuple(f.name for f in dataclasses.fields(ModelConfig) if _is_bound(f"ModelConfig.{f.name}"))
  return ConfigBundle(model=built["ModelConfig"], data=built["DataConfig"], optimizer=built["OptimizerConfig"],
                      mesh=built["MeshConfig"], train=built["TrainConfig"], finetune=built["FinetuneConfig"],
                      sweep=built["SweepConfig"],
                      model_bound=bound,
                      operative_config=gin.operative_config_str())


def _is_bound(name: str) -> bool:
  try:
    gin.query_parameter(name)
    return True
  except ValueError:
    return False
