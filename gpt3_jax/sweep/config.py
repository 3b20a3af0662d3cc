"""SweepConfig: what a sweep searches, how, and where its study lives (gin: `SweepConfig.*`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

DIRECTIONS = ("minimize", "maximize")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
KINDS = ("float", "log", "int", "choice")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  """A sweep (`--mode=sweep`, gpt3_jax/sweep/study.py): each trial is a training run of the gin files with the
  trial's bindings added, in <workdir>/trial_<number>.

  Attributes:
    space: gin binding -> ('float', low, high), ('log', low, high) (log-uniform), ('int', low, high) or
      ('choice', (value, ...)), e.g. {'OptimizerConfig.peak_learning_rate': ('log', 1e-4, 3e-2),
      'ModelConfig.d_model': ('choice', (64, 128))}. Linked bindings set together, one choice of tuples:
      {'ModelConfig.d_model,ModelConfig.n_heads': ('choice', ((128, 4), (256, 8)))}.
    n_trials: trials this worker runs (several workers on one storage share the study).
    metric: the evaluation metric the trial returns ('loss', or any key of its eval metrics, e.g. 'accuracy').
    direction: 'minimize' or 'maximize'.
    sampler: 'tpe', 'random' or 'grid' (every combination of the 'choice' parameters).
    pruner: 'median', 'hyperband' or 'none': stops a trial whose evaluations fall behind the others'.
    storage: an SQLAlchemy URL ('postgresql://user:password@host/db'); empty: sqlite:///<workdir>/study.db.
    study_name: the study's name in the storage.
    heartbeat_s: a running trial's heartbeat; a trial silent for 3 heartbeats (its worker died) is failed and
      re-run, resuming from its checkpoints, by the next worker that starts a trial.
    seed: the samplers' seed (trial n draws with seed + n, so workers draw distinct values).
    workers: worker processes this command starts on this machine, each with its share of the devices
      (gpt3_jax/sweep/launch.py: a CPU's cores split between them, or one GPU each); each runs n_trials trials.
  """

  space: Optional[Dict[str, Tuple[Any, ...]]] = None
  n_trials: int = 8
  metric: str = "loss"
  direction: str = "minimize"
  sampler: str = "tpe"
  pruner: str = "median"
  storage: str = ""
  study_name: str = "sweep"
  heartbeat_s: int = 10
  seed: int = 0
  workers: int = 1

  def __post_init__(self):
    if self.space is not None:
      object.__setattr__(self, "space", {k: tuple(v) for k, v in dict(self.space).items()})
    from gpt3_jax.config_types import check_choice
    for name in ("n_trials", "heartbeat_s", "workers"):
      if getattr(self, name) <= 0:
        raise ValueError(f"SweepConfig.{name} must be positive, got {getattr(self, name)}")
    check_choice("SweepConfig", "direction", self.direction, DIRECTIONS)
    check_choice("SweepConfig", "sampler", self.sampler, SAMPLERS)
    check_choice("SweepConfig", "pruner", self.pruner, PRUNERS)
    for name, spec in (self.space or {}).items():
      check_spec(name, spec)
    if self.sampler == "grid" and any(spec[0] != "choice" for spec in (self.space or {}).values()):
      raise ValueError("SweepConfig.sampler='grid' needs every parameter as ('choice', (values, ...))")


def check_spec(name: str, spec: Tuple[Any, ...]) -> None:
  example = "e.g. ('log', 1e-4, 1e-2) or ('choice', (64, 128))"
  if "." not in name:
    raise ValueError(f"SweepConfig.space: {name!r} is not a gin binding such as 'OptimizerConfig.peak_learning_rate'")
  if not spec or spec[0] not in KINDS:
    raise ValueError(f"SweepConfig.space[{name!r}]={spec!r}: the first entry is one of {KINDS}; {example}")
  if spec[0] == "choice":
    if len(spec) != 2 or not isinstance(spec[1], (tuple, list)) or not spec[1]:
      raise ValueError(f"SweepConfig.space[{name!r}]={spec!r}: a choice is ('choice', (value, ...))")
    width = len(name.split(","))
    if width > 1 and not all(isinstance(v, (tuple, list)) and len(v) == width for v in spec[1]):
      raise ValueError(f"SweepConfig.space[{name!r}]: linked bindings take ('choice', ((v1, v2, ...), ...)) with "
                       f"{width} values in each")
    return
  if "," in name:
    raise ValueError(f"SweepConfig.space[{name!r}]: linked bindings take a ('choice', ...) of tuples")
  if len(spec) != 3 or not all(isinstance(x, (int, float)) for x in spec[1:]) or not spec[1] < spec[2]:
    raise ValueError(f"SweepConfig.space[{name!r}]={spec!r}: a range is ({spec[0]!r}, low, high) with low < high")
  if spec[0] == "log" and spec[1] <= 0:
    raise ValueError(f"SweepConfig.space[{name!r}]={spec!r}: a log range needs low > 0")
