"""Guards read each step's metrics one step behind the device: the non-finite guard stops a run after too many
skipped steps in a row; the spike guard (PaLM) restores the newest checkpoint before a loss spike and skips
batches."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
from absl import logging

from gpt3_jax.training import hooks


class NonFiniteLossError(FloatingPointError):
  """Too many consecutive steps with a non-finite loss or gradient."""


@dataclasses.dataclass(frozen=True)
class StepRecord:
  """A dispatched step: `step` is the step count after it; metrics are still on the device."""
  step: int
  metrics: Any
  learning_rate: float
  batch_size: int
  data_index: int


def _nonfinite(run, done: int, values: dict) -> None:
  loop, cfg = run.loop, run.cfg
  loop.skipped_steps += 1
  loop.consecutive_nonfinite += 1
  logging.warning("step %d: non-finite loss %s / grad norm %s; update skipped (%d in a row)", done,
                  values["loss"], values["grad_norm"], loop.consecutive_nonfinite)
  if loop.consecutive_nonfinite >= cfg.max_consecutive_nonfinite:
    last = run.checkpointer.all_steps()
    good = done - loop.consecutive_nonfinite
    raise NonFiniteLossError(
        f"{loop.consecutive_nonfinite} consecutive steps had a non-finite loss or gradient (steps "
        f"{good + 1}-{done}); stopping. Skipped steps change no parameters: the newest checkpoint (step "
        f"{last[-1] if last else None}) holds the parameters of step {min(good, last[-1]) if last else None}; "
        f"lower the learning rate or check the data")


def _is_spike(run, loss: float) -> bool:
  history, factor = run.loop.history, run.cfg.spike_factor
  return factor > 0 and len(history) >= history.maxlen and loss > factor * (sum(history) / len(history))


def inspect(run, record: StepRecord) -> Optional[int]:
  """Reads one step's metrics, applies the guards and logs at the cadence. Returns the restored step when a
  spike was recovered from (the caller continues from there), else None."""
  values = {k: float(v) for k, v in jax.device_get(record.metrics).items()}
  if values["skipped"]:
    _nonfinite(run, record.step, values)
  else:
    run.loop.consecutive_nonfinite = 0
    if _is_spike(run, values["loss"]):
      return recover(run, record.step, values["loss"])
    run.loop.history.append(values["loss"])
  if record.step % run.cfg.log_every == 0 or record.step == run.cfg.train_steps:
    hooks.log_step(run, record, values)
  return None


def recover(run, spike_step: int, loss: float) -> int:
  """Restores the newest checkpoint before `spike_step`, skips batches; returns the restored step."""
  cfg = run.cfg
  run.loop.spike_recoveries += 1
  if run.loop.spike_recoveries > cfg.max_spike_recoveries:
    raise NonFiniteLossError(f"loss spike at step {spike_step} after {cfg.max_spike_recoveries} recoveries; "
                             f"stopping")
  run.checkpointer.wait()
  found = run.checkpointer.restore_newest_good(run.asm.abstract_state, check_meta=run.check_meta, below=spike_step)
  if found is None:
    raise NonFiniteLossError(f"loss spike at step {spike_step} but no checkpoint before it to restore")
  step, run.state, data_state, _ = found
  run.checkpointer.set_aside_after(step, "abandoned")  # checkpoints of the spiking trajectory
  run.feed.data_iter.set_state(data_state)
  run.feed.skip(cfg.spike_skip_batches * (run.ramp.batch_size(step) // run.ramp.base_batch))
  run.loop.history.clear()
  run.window.reset(step)
  run.logger.write(spike_step, {"spike_step": float(spike_step), "loss": loss, "restored_step": float(step),
                                "skipped_batches": float(cfg.spike_skip_batches)}, prefix="event")
  logging.warning("loss spike at step %d (loss %.4f): restored step %d and skipped %d batches", spike_step, loss,
                  step, cfg.spike_skip_batches)
  return step
