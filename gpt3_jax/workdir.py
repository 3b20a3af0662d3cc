"""The workdir: its layout, the names of what is stored in it, and the one way to read a model back.

  <workdir>/operative_config.gin          the gin config of the newest start (earlier ones: operative_config.N.gin)
  <workdir>/checkpoints/<step>/{state,data,meta}   orbax checkpoints of a training run (`Checkpointer`)
  <workdir>/checkpoints_damaged/, checkpoints_abandoned/   checkpoints set aside (never restored again)
  <workdir>/best/checkpoints/<step>       the best parameters by TrainConfig.keep_best_metric (reads as a workdir)
  <workdir>/events.out.tfevents.*         TensorBoard metrics
  <workdir>/hf_import/, model_config.json, tokenizer/   a Hugging Face import (`python -m gpt3_jax.convert`)

`load_model(workdir)` gives (model config, params, tokenizer) of either kind of workdir; `session`, `convert`, the
export and `TrainConfig.init_from` all read through it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Optional

CHECKPOINTS = "checkpoints"
BEST = "best"
CHECKPOINT_ITEMS = ("state", "data", "meta")
OPERATIVE_CONFIG = "operative_config.gin"
IMPORT_PARAMS = "hf_import"
IMPORT_CONFIG = "model_config.json"
IMPORT_TOKENIZER = "tokenizer"
HF_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                      "special_tokens_map.json")


def checkpoints_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINTS)


def checkpoint_steps(workdir: str) -> list:
  """The steps of the workdir's complete training checkpoints, in order (orbax renames a step's directory to its
  number only once it is complete)."""
  directory = checkpoints_dir(workdir)
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(directory) else []


def has_checkpoints(workdir: str) -> bool:
  """Whether the workdir holds at least one complete training checkpoint."""
  return bool(checkpoint_steps(workdir))


def is_import(workdir: str) -> bool:
  return os.path.isfile(os.path.join(workdir, IMPORT_CONFIG))


def write_operative_config(workdir: str, text: str) -> str:
  """Writes `text` as workdir/operative_config.gin (process 0 only). A different earlier file is kept as
  operative_config.N.gin (N = 1, 2, ...), so every start's config stays in the workdir."""
  import jax
  path = os.path.join(workdir, OPERATIVE_CONFIG)
  if jax.process_index() != 0:
    return path
  try:
    os.makedirs(workdir, exist_ok=True)
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        if f.read() == text:
          return path
      n = 1
      while os.path.exists(os.path.join(workdir, f"operative_config.{n}.gin")):
        n += 1
      os.replace(path, os.path.join(workdir, f"operative_config.{n}.gin"))
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(path + ".tmp", path)
  except OSError as e:
    raise ValueError(f"workdir {workdir!r} cannot be written ({e.strerror}); pass a writable --workdir") from None
  return path


@dataclasses.dataclass
class LoadedModel:
  """What a workdir holds for inference or as an initialization: params are host NumPy arrays."""
  cfg: Any  # ModelConfig
  params: Any
  tokenizer_path: Optional[str]
  step: Optional[int] = None  # the checkpoint's step (None for an import)

  def tokenizer(self):
    from gpt3_jax.data.tokenizer import load_tokenizer
    if not self.tokenizer_path or not os.path.exists(self.tokenizer_path):
      raise FileNotFoundError(f"no tokenizer found (looked for {self.tokenizer_path!r}); pass a tokenizer path")
    return load_tokenizer(self.tokenizer_path)


def _read_training_checkpoint(workdir: str) -> LoadedModel:
  import jax
  import numpy as np
  import orbax.checkpoint as ocp
  from gpt3_jax.model.config import ModelConfig
  manager = ocp.CheckpointManager(checkpoints_dir(workdir), item_names=CHECKPOINT_ITEMS)
  try:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"{checkpoints_dir(workdir)} holds no complete checkpoint; train first or pass "
                              f"another --workdir")
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    # Read the state as stored, then keep only the params.
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
  finally:
    manager.close()
  params = state["params"] if isinstance(state, dict) else state.params
  return LoadedModel(cfg=ModelConfig(**meta["model_config"]), params=jax.tree.map(np.asarray, params),
                     tokenizer_path=meta.get("tokenizer_path"), step=int(step))


def _read_import(workdir: str) -> LoadedModel:
  import jax
  import numpy as np
  import orbax.checkpoint as ocp
  from gpt3_jax.model.config import ModelConfig
  with open(os.path.join(workdir, IMPORT_CONFIG)) as f:
    cfg = ModelConfig(**json.load(f))
  checkpointer = ocp.StandardCheckpointer()
  try:
    params = checkpointer.restore(os.path.join(os.path.abspath(workdir), IMPORT_PARAMS))
  finally:
    checkpointer.close()
  tokenizer = os.path.join(workdir, IMPORT_TOKENIZER)
  return LoadedModel(cfg=cfg, params=jax.tree.map(np.asarray, params),
                     tokenizer_path=tokenizer if os.path.isdir(tokenizer) else None)


def load_model(workdir: str) -> LoadedModel:
  """The newest checkpoint of a training run, or a Hugging Face import."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"workdir {workdir!r} does not exist; pass the --workdir of a training run or of "
                            f"`python -m gpt3_jax.convert --from_hf`")
  if os.path.isdir(checkpoints_dir(workdir)):
    return _read_training_checkpoint(workdir)
  if is_import(workdir):
    return _read_import(workdir)
  raise FileNotFoundError(f"{workdir!r} has neither training checkpoints nor a Hugging Face import; pass the "
                          f"--workdir of a training run or of `python -m gpt3_jax.convert --from_hf`")


def save_import(workdir: str, cfg, params, hf_dir: str) -> None:
  """Writes an imported model: orbax params, its ModelConfig and the Hugging Face tokenizer files found in
  `hf_dir` (copied to workdir/tokenizer; none is an import that can score ids but not text)."""
  import jax
  import numpy as np
  import orbax.checkpoint as ocp
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(workdir, IMPORT_PARAMS), jax.tree.map(np.asarray, params))
  checkpointer.wait_until_finished()
  checkpointer.close()
  with open(os.path.join(workdir, IMPORT_CONFIG), "w") as f:
    json.dump(dataclasses.asdict(cfg), f, indent=2)
  files = [name for name in HF_TOKENIZER_FILES if os.path.isfile(os.path.join(hf_dir, name))]
  if files:
    target = os.path.join(workdir, IMPORT_TOKENIZER)
    os.makedirs(target, exist_ok=True)
    for name in files:
      shutil.copyfile(os.path.join(hf_dir, name), os.path.join(target, name))
