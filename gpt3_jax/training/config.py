"""TrainConfig: the training loop's settings, and which of them a checkpoint pins."""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

# ModelConfig fields that define the parameters: a checkpoint written with other values cannot be restored.
ARCHITECTURE_FIELDS = ("vocab_size", "n_ctx", "d_model", "n_layers", "n_heads", "d_head", "d_ff",
                       "attention_pattern", "local_window", "scan_layers", "lora_rank", "lora_targets",
                       "class_labels")
# TrainConfig fields that fix the data position and the tokens seen at a step (with DataConfig.seed, saved as
# `data_seed`). The initialization seed is not among them: it matters only at step 0.
STREAM_FIELDS = ("global_batch_size", "batch_ramp_tokens", "batch_ramp_start_tokens")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The loop's settings. Batch sizes count sequences of `seq_len` tokens over all processes.

  Seeds: `seed` seeds the parameter initialization (and the end-of-run sample) only; the data order is
  `DataConfig.seed`'s.

  Initial state: a run resumes the newest checkpoint of its own workdir when there is one. Otherwise it starts
  from scratch, or, with `init_from` set to another workdir (a training run or a `python -m gpt3_jax.convert
  --from_hf` import), from that workdir's newest parameters with a fresh optimizer at step 0. With `branch_from`
  set to another training run's workdir it continues that run's checkpoint at `branch_step` (0: its newest) in
  this workdir: parameters, optimizer state, data position and step, as a resume would, under this run's
  optimizer config (a WSD cool-down branched from a stable checkpoint, OptimizerConfig).
  """

  global_batch_size: int = 8
  seq_len: Optional[int] = None  # None: the model's n_ctx
  train_steps: int = 100
  num_microbatches: int = 1
  seed: int = 0
  init_from: str = ""
  branch_from: str = ""
  branch_step: int = 0
  log_every: int = 10
  eval_every: int = 100
  eval_batches: int = 8
  checkpoint_every: int = 100
  keep_checkpoints: int = 3
  async_checkpointing: bool = True
  peak_flops_per_device: Optional[float] = None  # None: datasheet peak, or a measured matmul on CPU
  sample_prompt: str = ""
  sample_tokens: int = 64
  sample_temperature: float = 0.8
  sample_top_k: int = 0  # 0: no top-k filter
  sample_top_p: float = 1.0  # 1: no nucleus filter
  # Numerical faults: a non-finite step changes nothing; this many in a row stop the run.
  max_consecutive_nonfinite: int = 5
  # Loss spikes (PaLM): loss > spike_factor x the mean of the last spike_window losses restores the newest
  # checkpoint before the spike and skips spike_skip_batches batches. spike_factor 0 turns detection off.
  spike_factor: float = 0.0
  spike_window: int = 20
  spike_skip_batches: int = 100
  max_spike_recoveries: int = 3
  # Few-shot tasks during training (gpt3_jax/evaluation, docs/evaluation.md): each of task_eval_fewshot's K on
  # task_eval_tasks every task_eval_every steps (0: only at the last step) and at the end, on at most
  # task_eval_limit examples per task (0: all).
  task_eval_tasks: Tuple[str, ...] = ()
  task_eval_fewshot: Tuple[int, ...] = (0,)
  task_eval_dir: str = ""
  task_eval_every: int = 0
  task_eval_limit: int = 0
  # Batch-size ramp (Appendix B): linear from batch_ramp_start_tokens per batch to the full batch over
  # batch_ramp_tokens tokens, in power-of-two stages. 0 turns it off.
  batch_ramp_tokens: float = 0.0
  batch_ramp_start_tokens: float = 32768
  # Keep the best parameters by a logged metric in <workdir>/best (training/best_checkpoint.py): 'loss',
  # 'accuracy' or 'macro_f1' (classifiers), 'fewshot/<task>/<K>shot/<metric>'; '' keeps none. The mode is 'min'
  # for a loss and 'max' otherwise unless keep_best_mode says.
  keep_best_metric: str = ""
  keep_best_mode: str = ""

  def __post_init__(self):
    from gpt3_jax.config_types import check_finite
    for name in ("global_batch_size", "train_steps", "num_microbatches", "log_every", "eval_every", "eval_batches",
                 "checkpoint_every", "keep_checkpoints", "max_consecutive_nonfinite", "spike_window",
                 "max_spike_recoveries"):
      if isinstance(getattr(self, name), int) and getattr(self, name) <= 0:
        raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(self, name)}; e.g. "
                         f"TrainConfig.{name} = {getattr(TrainConfig, name)}")
    if any(not isinstance(k, int) or k < 0 for k in self.task_eval_fewshot):
      raise ValueError(f"TrainConfig.task_eval_fewshot must be K >= 0 values, got {self.task_eval_fewshot}; e.g. "
                       f"TrainConfig.task_eval_fewshot = (0, 1, 10)")
    if isinstance(self.seq_len, int) and self.seq_len <= 0:
      raise ValueError(f"TrainConfig.seq_len must be positive or None (the model's n_ctx), got {self.seq_len}")
    for name in ("spike_factor", "batch_ramp_tokens", "sample_temperature"):
      if isinstance(getattr(self, name), (int, float)):
        check_finite("TrainConfig", name, getattr(self, name), low=0.0, example=getattr(TrainConfig, name))
    if isinstance(self.sample_top_k, int) and self.sample_top_k < 0:
      raise ValueError(f"TrainConfig.sample_top_k must be >= 0 (0: off), got {self.sample_top_k}; e.g. "
                       f"TrainConfig.sample_top_k = 40")
    if isinstance(self.sample_top_p, (int, float)) and not 0.0 < self.sample_top_p <= 1.0:
      raise ValueError(f"TrainConfig.sample_top_p must be in (0, 1] (1: off), got {self.sample_top_p}; e.g. "
                       f"TrainConfig.sample_top_p = 0.9")

  def resolved_seq_len(self, n_ctx: int) -> int:
    return self.seq_len or n_ctx
