"""One handler per signal for every preemption notice of the process.

Notices (``jaxhooks.preemption.PreemptionNotice``) subscribe to a signal
instead of each installing a handler of its own, so that any number of
them, installed and removed in any order, leave the handler that was there
before the first one::

  subscribe(sig, callback)     the first one installs the shared handler
                               (the one before it is remembered)
  unsubscribe(sig, callback, unhandled=...)
                               the last one puts that handler back; a
                               signal received and not acted on is kept
                               for the next subscriber (a session that
                               failed before it could save)
  with passthrough(): ...      while a session ends on an exception, the
                               handlers from before are back: a SIGTERM or
                               Ctrl-C then acts as it would without
                               jaxhooks, instead of setting a flag that no
                               loop will read again

Example:
  >>> import signal
  >>> before, got = signal.getsignal(signal.SIGUSR1), []
  >>> def on_usr1(signum, frame): got.append(signum)
  >>> subscribe(signal.SIGUSR1, on_usr1)
  >>> signal.raise_signal(signal.SIGUSR1); got == [signal.SIGUSR1]
  True
  >>> unsubscribe(signal.SIGUSR1, on_usr1, unhandled=False)
  >>> signal.getsignal(signal.SIGUSR1) == before
  True
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Callable, Dict, Iterator, List, Set

__all__ = ["subscribe", "unsubscribe", "passthrough"]

Callback = Callable[[int, Any], None]

_original: Dict[int, Any] = {}
_subscribers: Dict[int, List[Callback]] = {}
_unhandled: Set[int] = set()
_passing = 0


def _dispatch(signum: int, frame: Any) -> None:
  for callback in list(_subscribers.get(signum, ())):
    callback(signum, frame)


def _set(sig: int, handler: Any) -> None:
  if threading.current_thread() is threading.main_thread():
    signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def subscribe(sig: int, callback: Callback) -> None:
  """Calls ``callback(signum, frame)`` on ``sig`` (main thread only); at
  once if such a signal came and was not acted on."""
  if sig not in _subscribers:
    _original[sig] = signal.signal(sig, _dispatch)
    _subscribers[sig] = []
  _subscribers[sig].append(callback)
  if sig in _unhandled:
    _unhandled.discard(sig)
    callback(sig, None)


def unsubscribe(sig: int, callback: Callback, *, unhandled: bool) -> None:
  """Stops calling ``callback``; ``unhandled``: it received ``sig`` and
  did not act on it."""
  callbacks = _subscribers.get(sig, [])
  if callback in callbacks:
    callbacks.remove(callback)
  if unhandled:
    _unhandled.add(sig)
  if sig in _subscribers and not callbacks:
    del _subscribers[sig]
    _set(sig, _original.pop(sig))


@contextlib.contextmanager
def passthrough() -> Iterator[None]:
  """In the block, the handlers from before jaxhooks' are installed."""
  global _passing
  _passing += 1
  try:
    if _passing == 1:
      for sig in list(_subscribers):
        _set(sig, _original[sig])
    yield
  finally:
    _passing -= 1
    if _passing == 0:
      for sig in list(_subscribers):
        _set(sig, _dispatch)
