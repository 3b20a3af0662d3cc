"""SIGTERM / SIGINT (preemption): finish the current step, save synchronously, exit cleanly.

The handler only sets a flag; the loop polls it after each step. With several processes, every process must
stop at the same step: the flag is or-ed over processes (a tiny all-gather) before it is acted on.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils


class PreemptionWatcher:
  """Context manager installing SIGTERM / SIGINT handlers (main thread only) that request a clean stop."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, poll_every: int = 10):
    self.poll_every = poll_every
    self._requested = False
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False

  def _handle(self, signum, frame):
    del frame
    if self._requested and signum == signal.SIGINT:  # a second Ctrl-C means: stop now
      raise KeyboardInterrupt
    self._requested = True
    logging.warning("received %s: finishing this step, saving a checkpoint, then exiting",
                    signal.Signals(signum).name)

  def request(self) -> None:
    self._requested = True

  def should_stop(self, step: int) -> bool:
    """True on every process once any process was signalled. With several processes the flags are or-ed every
    `poll_every` steps only (the same steps everywhere): the all-gather waits for the step in flight."""
    if jax.process_count() == 1:
      return self._requested
    if step % self.poll_every:
      return False
    flags = multihost_utils.process_allgather(np.int32(self._requested))
    return bool(np.max(flags))
