"""Orbax checkpoints of the train state, the data iterator position and the run's metadata.

Each checkpoint step holds three items: `state` (sharded TrainState), `data` (the grain iterator state, JSON) and
`meta` (model config and step, JSON). Orbax writes into a temporary directory and renames it when complete, so an
interrupted save is never listed as a checkpoint; restore always reads the newest complete step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Tuple

import orbax.checkpoint as ocp
from absl import logging


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  every_steps: int = 1000
  keep: int = 3
  async_save: bool = True


class Checkpointer:
  """Saves every `every_steps` steps (and when forced), keeps the last `keep`, restores the latest."""

  def __init__(self, directory: str, cfg: CheckpointConfig):
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=cfg.every_steps, max_to_keep=cfg.keep,
        enable_async_checkpointing=cfg.async_save, create=True)
    self._manager = ocp.CheckpointManager(directory, options=options, item_names=("state", "data", "meta"))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict, meta: dict, force: bool = False) -> bool:
    saved = self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta)),
        force=force)
    if saved:
      logging.info("checkpoint: saving step %d", step)
    return saved

  def restore(self, abstract_state: Any, step: Optional[int] = None) -> Optional[Tuple[Any, dict, dict]]:
    """(state, data_state, meta) of `step` (default: latest), placed as `abstract_state`'s shardings."""
    step = self._manager.latest_step() if step is None else step
    if step is None:
      return None
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
