"""Sessions still open when the interpreter exits are ended there.

A user's loop can leave without ``end()``: an exception in its own body
(the data pipeline), Ctrl-C between two calls, ``sys.exit``, or a
forgotten ``end()``. The checkpoint writes that were started must still
reach the disk, and every hook's ``on_exception`` must run (signal handlers
put back, ``save_on_exception``). Plain ``atexit`` is too late for that:
by then Python has shut down the thread pools that Orbax and jaxhooks'
writer thread use. So an open session registers here, and at interpreter
exit, before those pools stop (``threading``'s exit callbacks run in
reverse order of registration; this one is registered after them)::

  for each session begun and not ended:
    exc = the exception that ends the process (sys.last_value), or a
          LifecycleError saying that `end()` was never called
    log a warning naming it
    session.abort(exc)        # every hook's on_exception: pending writes
                              # finished or their failure logged

While that runs, SIGTERM and Ctrl-C act as they did before jaxhooks; a
Ctrl-C or a signal handler's ``sys.exit`` then ends the process at once,
with the status it asks for. ``kill -9`` (SIGKILL) is the one exit nothing
can act on. A write cut by either leaves a temporary directory that
restore ignores.
"""

from __future__ import annotations

# Imported first so that its exit callback is registered before ours, and
# so runs after it.
import concurrent.futures.thread  # noqa: F401
import logging
import os
import signal
import sys
import threading
from typing import Any, Dict, Optional

__all__ = ["track", "untrack", "end_open_sessions", "open_sessions"]

log = logging.getLogger("jaxhooks")

_open: Dict[int, Any] = {}
_registered = False
_lock = threading.Lock()


def _register() -> None:
  global _registered
  if _registered:
    return
  register = getattr(threading, "_register_atexit", None)
  if register is None:   # not CPython: the best that is left
    import atexit
    atexit.register(end_open_sessions)
  else:
    register(end_open_sessions)
  _registered = True


def track(session: Any) -> None:
  """Ends ``session`` at interpreter exit unless :func:`untrack` is called
  first. ``session`` has ``abort(exc)`` and ``step``."""
  with _lock:
    _register()
    _open[id(session)] = session


def untrack(session: Any) -> None:
  """``session`` was ended (or aborted): nothing to do at exit."""
  with _lock:
    _open.pop(id(session), None)


def open_sessions() -> list:
  """The sessions begun and not ended (nor aborted), oldest first."""
  with _lock:
    return list(_open.values())


def _exiting_exception() -> Optional[BaseException]:
  """The uncaught exception that ends the process, if any."""
  exc = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
  return exc if isinstance(exc, BaseException) else None


def end_open_sessions() -> None:
  """Aborts every open session (see the module docstring)."""
  from jaxhooks.errors import LifecycleError  # a light, late import
  exc = _exiting_exception()
  for session in open_sessions():
    if exc is None:
      error: BaseException = LifecycleError(
          f"The process exited at step {session.step} without `end()`: "
          "call `end(state)` after the loop (or use MonitoredTrainingSession "
          "in a `with` block).")
      log.warning("%s Pending checkpoint writes are finished now and every "
                  "hook's `on_exception` runs; the final state is not saved.",
                  error)
    else:
      error = exc
      log.warning("The process is exiting on %s at step %d without `end()`: "
                  "pending checkpoint writes are finished now and every "
                  "hook's `on_exception` runs.", type(exc).__name__,
                  session.step)
    try:
      session.abort(error)
    except (KeyboardInterrupt, SystemExit) as e:
      _exit_now(e)
    except Exception as e:  # the other sessions still end
      log.error("Ending the session at exit failed: %s: %s",
                type(e).__name__, e)


def _exit_now(interrupt: BaseException) -> None:
  """A Ctrl-C, or a signal handler calling ``sys.exit``, came while the
  exit waited for a session: the process ends as that asks, at once (the
  write in flight stays a temporary directory that restore ignores)."""
  log.warning("%s while ending the session at exit: exiting now.",
              type(interrupt).__name__)
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError, AttributeError):
      pass
  if isinstance(interrupt, KeyboardInterrupt):
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
  code = getattr(interrupt, "code", 1)
  os._exit(code if isinstance(code, int) else 1)
