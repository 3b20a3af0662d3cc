"""The one error boundary of every command (`main`, `convert`, ...): a user error prints one line and exits 2.

Set GPT3_JAX_TRACEBACK=1 to see the full traceback instead.
"""

from __future__ import annotations

import functools
import os
import sys


class UserError(Exception):
  """A problem with the command line or configuration: printed as one line, exit status 2."""


USER_ERRORS = (UserError, ValueError, FileNotFoundError)


def one_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


def one_line_errors(fn):
  """Wraps a command's main: user errors become `error: <first line>` on stderr and exit status 2."""

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except USER_ERRORS as e:
      if os.environ.get("GPT3_JAX_TRACEBACK"):
        raise
      from absl import logging
      logging.flush()
      print(f"error: {one_line(e)}", file=sys.stderr)
      sys.exit(2)
    except Exception:
      from gpt3_jax.parallel import peer_watchdog
      peer_watchdog.await_verdict()  # a lost peer of a multi-process run: one line naming it, then exit
      raise

  return wrapped
