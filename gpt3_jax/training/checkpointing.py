"""Orbax checkpoints of the train state, the data iterator position and the run's metadata.

Each checkpoint step holds three items: `state` (sharded TrainState), `data` (the grain iterator state, JSON) and
`meta` (model config and step, JSON). Orbax writes into a temporary directory and renames it when complete, so an
interrupted save is never listed as a checkpoint; restore always reads the newest complete step.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from typing import Any, Optional, Tuple

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from gpt3_jax.workdir import CHECKPOINT_ITEMS


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  every_steps: int = 1000
  keep: int = 3
  async_save: bool = True


class CheckpointWriteError(RuntimeError):
  """A checkpoint could not be written: training stops instead of running on without checkpoints."""


class CheckpointRestoreError(RuntimeError):
  """No checkpoint of the workdir could be restored (nothing was moved or overwritten)."""


def _all_processes(ok: bool) -> bool:
  if jax.process_count() == 1:
    return ok
  import numpy as np
  return bool(np.min(multihost_utils.process_allgather(np.int32(ok))))


class Checkpointer:
  """Saves every `every_steps` steps (and when forced), keeps the last `keep`, restores the latest."""

  def __init__(self, directory: str, cfg: CheckpointConfig):
    self.directory = directory
    self.cfg = cfg
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=1, max_to_keep=cfg.keep, enable_async_checkpointing=cfg.async_save, create=True,
        cleanup_tmp_directories=True)  # a save interrupted by a kill leaves a tmp dir: removed on restart
    self._manager = ocp.CheckpointManager(directory, options=options, item_names=CHECKPOINT_ITEMS)

  def all_steps(self):
    return sorted(self._manager.all_steps())

  def due(self, step: int) -> bool:
    return step % self.cfg.every_steps == 0

  def save(self, step: int, state: Any, data_state: dict, meta: dict) -> None:
    """Starts a save of `step` (asynchronous unless configured otherwise). Errors of earlier saves surface here."""
    if step in self._manager.all_steps():
      return
    try:
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta)),
          force=True)
    except Exception as e:  # disk full, unwritable directory, ...: stop now rather than train on unsaved
      raise CheckpointWriteError(f"saving checkpoint step {step} in {self.directory} failed: {e}") from e
    logging.info("checkpoint: saving step %d", step)

  def check_for_errors(self) -> None:
    """Raises CheckpointWriteError if a background save failed."""
    try:
      self._manager.check_for_errors()
    except Exception as e:
      raise CheckpointWriteError(f"a checkpoint save in {self.directory} failed: {e}") from e

  def restore_newest_good(self, abstract_state: Any, *, check_meta=None, below: Optional[int] = None):
    """(step, state, data_state, meta) of the newest checkpoint (with step < `below`) that restores; None when
    there is no checkpoint.

    A checkpoint that fails to restore while an older one restores is damaged (truncated or deleted files): it
    is moved to <dir>_damaged/ with a warning naming it. When every checkpoint fails, the error is raised and
    nothing is moved (out of memory, a storage outage or a changed state structure are not damage).
    `check_meta(meta)` runs before any array is read and may raise to refuse an incompatible checkpoint; that
    error propagates and nothing is moved. With several processes, all of them agree on every attempt.
    """
    failed = []
    for step in reversed(self.all_steps()):
      if below is not None and step >= below:
        continue
      try:
        meta, meta_error = self.restore_meta(step), None
      except Exception as e:  # unreadable metadata
        meta, meta_error = None, e
      if not _all_processes(meta_error is None):
        failed.append((step, meta_error or RuntimeError("metadata unreadable on another process")))
        continue
      if check_meta is not None:
        check_meta(meta)
      try:
        state, data_state, meta = self.restore(abstract_state, step)
        ok = True
      except Exception as e:  # truncated / deleted array files, or not damage at all: decided below
        failed.append((step, e))
        ok = False
      if _all_processes(ok):
        for bad_step, error in failed:
          self._set_aside(bad_step, error)
        return step, state, data_state, meta
      if ok:  # restored here but not on another process: every process must treat it alike
        failed.append((step, RuntimeError("restore failed on another process")))
    if failed:
      step, error = failed[0]
      raise CheckpointRestoreError(f"no checkpoint in {self.directory} restores; the newest (step {step}) failed "
                                   f"with {type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}") \
          from error
    return None

  def _set_aside(self, step: int, error: Exception) -> None:
    target = self._move_aside(step, "damaged")
    logging.warning("checkpoint %s is damaged (%s: %s); moved to %s, restoring the previous one",
                    os.path.join(self.directory, str(step)), type(error).__name__,
                    (str(error).splitlines() or [""])[0][:200], target)
    self._manager.reload()

  def set_aside_after(self, step: int, reason: str) -> None:
    """Moves every checkpoint newer than `step` to <dir>_<reason>/ (kept, but never restored again)."""
    for newer in [s for s in self.all_steps() if s > step]:
      logging.warning("checkpoint step %d moved to %s", newer, self._move_aside(newer, reason))
    self._manager.reload()

  def _move_aside(self, step: int, reason: str) -> str:
    folder = f"{self.directory.rstrip(os.sep)}_{reason}"
    target = os.path.join(folder, f"{step}-{int(time.time() * 1000)}")
    if jax.process_index() == 0:
      os.makedirs(folder, exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"move_aside_{reason}_{step}")
    return target

  def restore(self, abstract_state: Any, step: int) -> Tuple[Any, dict, dict]:
    """(state, data_state, meta) of `step`, placed as `abstract_state`'s shardings."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    logging.info("checkpoint: restored step %d", step)
    return restored.state, restored.data, restored.meta

  def restore_meta(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
