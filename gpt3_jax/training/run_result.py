"""What `trainer.train` returns: the final state and evaluation of a run, typed."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional

from gpt3_jax.model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class RunResult:
  step: int
  eval_loss: Optional[float]  # the mixture-weighted mean validation loss of the last evaluation (None: preempted)
  eval_metrics: Dict[str, float]  # that evaluation: 'loss' and, with several sources, '<source>/loss'
  unigram_loss: float  # add-one unigram baseline on the validation splits, weighted like eval_loss
  compile_seconds: float
  model_config: ModelConfig
  state: Any  # TrainState, on the devices
  tokenizer: Any  # TextTokenizer, or None for token-file data without one
  preempted: bool
  initialized_from: str  # 'scratch', 'resumed', the init_from workdir or '<branch_from>@<step>'
  task_results: Dict[str, Any] = dataclasses.field(default_factory=dict)  # the last few-shot tasks: {task: {K: }}
  skipped_steps: int = 0
  spike_recoveries: int = 0
  consecutive_nonfinite: int = 0
  tokens: float = 0.0  # training tokens seen (D)
  flops_per_token: float = 0.0  # the model's training FLOPs per token at this run's sequence length
  best: Optional[Dict[str, Any]] = None  # TrainConfig.keep_best_metric's kept parameters: metric, value, step

  @property
  def eval_perplexity(self) -> Optional[float]:
    return math.exp(min(self.eval_loss, 50)) if self.eval_loss is not None else None
