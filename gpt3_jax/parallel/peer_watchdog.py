"""Detects a lost peer of a multi-process run in bounded time and stops this process with one line naming it.

Without it, a process whose peer was SIGKILLed waits in a collective until the coordination service's heartbeat
timeout (100 s by default) and then aborts with a native stack dump. Here every process bumps a counter under
`gpt3_jax/alive/<process id>` in the coordination service's key-value store every `timeout_s / 10` seconds
(counters, not clocks: hosts' clocks need not agree); a peer whose counter has not moved for `timeout_s` is lost,
and this process prints

  error: process 1 of 2 stopped responding (no heartbeat for 10 s); stopping ...

and exits with status 3 (the checkpoints written so far are intact: restart every process to resume). The
coordination service's own heartbeat is set to four times `timeout_s` (it can fire from half its timeout on), as
the backstop for a lost coordinator.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from typing import Callable, Dict, Optional

EXIT_STATUS = 3
PREFIX = "gpt3_jax/alive/"


class PeerWatchdog(threading.Thread):
  """A daemon thread; `client` is JAX's distributed runtime client (key_value_set / key_value_try_get)."""

  def __init__(self, client, process_id: int, num_processes: int, timeout_s: float,
               on_lost: Optional[Callable[[str], None]] = None):
    super().__init__(name="gpt3_jax-peer-watchdog", daemon=True)
    self.client, self.process_id, self.num_processes = client, process_id, num_processes
    self.timeout_s = timeout_s
    self.interval_s = max(0.05, timeout_s / 10)
    self.on_lost = on_lost or _exit
    self._stop = threading.Event()

  def stop(self) -> None:
    self._stop.set()

  def _read(self, peer: int) -> Optional[str]:
    try:
      return self.client.key_value_try_get(f"{PREFIX}{peer}")
    except Exception:  # pylint: disable=broad-except  (not yet written, or the service is unreachable)
      return None

  def run(self) -> None:
    beat = 0
    start = time.monotonic()
    seen: Dict[int, tuple] = {p: (None, start) for p in range(self.num_processes) if p != self.process_id}
    while not self._stop.wait(self.interval_s if beat else 0):
      beat += 1
      try:
        self.client.key_value_set(f"{PREFIX}{self.process_id}", str(beat), allow_overwrite=True)
      except Exception:  # pylint: disable=broad-except  (the coordinator is gone: peers' counters stop too)
        pass
      now = time.monotonic()
      for peer, (value, since) in seen.items():
        current = self._read(peer)
        if current is not None and current != value:
          seen[peer] = (current, now)
        elif now - since > self.timeout_s:
          self.on_lost(f"process {peer} of {self.num_processes} stopped responding (no heartbeat for "
                       f"{self.timeout_s:g} s); stopping process {self.process_id} too. Checkpoints written so far "
                       f"are intact: restart every process with the same command to resume (--peer_timeout_s sets "
                       f"this limit)")
          return


def _exit(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  os._exit(EXIT_STATUS)  # the main thread may be blocked in a collective that will never complete


_WATCHDOG: Optional[PeerWatchdog] = None


def await_verdict() -> None:
  """Called when this process failed with an unexpected error: a collective whose peer died fails fast (gloo:
  'connection reset') before the watchdog's timeout. Waits up to the timeout for the watchdog to name a lost
  peer (it then exits with its one line); returns when every peer is still alive, so the error is raised."""
  if _WATCHDOG is not None and _WATCHDOG.is_alive():
    _WATCHDOG.join(timeout=_WATCHDOG.timeout_s + 2 * _WATCHDOG.interval_s + 1)


def start(timeout_s: float) -> Optional[PeerWatchdog]:
  """Starts the watchdog of this process (after jax.distributed.initialize); None for a single process."""
  global _WATCHDOG
  import jax
  from jax._src import distributed as jax_distributed
  client = jax_distributed.global_state.client
  if jax.process_count() == 1 or client is None or _WATCHDOG is not None:
    return _WATCHDOG
  _WATCHDOG = PeerWatchdog(client, jax.process_index(), jax.process_count(), timeout_s)
  _WATCHDOG.start()
  # atexit runs last-registered first: this stops the thread before jax.distributed's own shutdown tears the
  # client down. A daemon thread still inside a client call at that moment aborts the process ('terminate
  # called ... exception not rethrown', seen once in a busy CI run after a multi-process run had finished).
  atexit.register(_stop_at_exit)
  return _WATCHDOG


def _stop_at_exit() -> None:
  if _WATCHDOG is not None and _WATCHDOG.is_alive():
    _WATCHDOG.stop()
    _WATCHDOG.join(timeout=2 * _WATCHDOG.interval_s + 1)
