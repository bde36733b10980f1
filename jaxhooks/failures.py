"""What a failure does while a session ends: every cleanup still runs.

When the hooks' ``end`` or ``on_exception`` run, one failing hook must not
keep the others from theirs (the checkpoint saver's final save, a signal
handler put back, a writer flushed)::

  failures = Failures(exc)             # exc: what ends the loop, or None
  for hook in hooks:
    failures.run(f"`{name}.end`", hook.end, session)  # caught, kept
  failures.raise_first()               # the first error, the later ones
                                       # attached to it as notes

Every error after the first is logged at once and attached to the first as
a note, so the user sees all of them in one traceback. A ``KeyboardInterrupt``
or ``SystemExit`` raised by a cleanup is not kept: it goes on at once.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, List, Optional

__all__ = ["Failures"]

log = logging.getLogger("jaxhooks")


class Failures:
  """Runs cleanups that must all run, and keeps their errors.

  Args:
    first: the exception that ends the loop, if any: later errors are
      attached to it.

  Example:
    >>> failures = Failures()
    >>> def fails(): raise OSError("disk full")
    >>> failures.run("`A.end`", fails)
    >>> failures.run("`B.end`", lambda: print("B ran"))
    B ran
    >>> failures.run("`C.end`", lambda: 1 / 0)
    >>> failures.first, failures.first.__notes__
    (OSError('disk full'), ['jaxhooks: `C.end` failed too: ZeroDivisionError: division by zero'])
  """

  def __init__(self, first: Optional[BaseException] = None):
    self.first = first
    self.others: List[BaseException] = []

  def add(self, error: BaseException, what: str) -> None:
    """Records ``error``, raised by ``what``."""
    if self.first is None:
      self.first = error
      return
    if error is self.first or error in self.others:
      return
    self.others.append(error)
    log.error("%s failed: %s: %s", what, type(error).__name__, error)
    self.first.add_note(f"jaxhooks: {what} failed too: "
                        f"{type(error).__name__}: {error}")

  def run(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
    """Calls ``fn(*args)``; an error it raises is recorded, not raised.

    ``KeyboardInterrupt`` and ``SystemExit`` (a second Ctrl-C, a signal
    handler that exits) are raised at once: whoever sent them wants the
    process to stop now, not after the other cleanups.
    """
    try:
      fn(*args)
    except Exception as e:  # every cleanup must run
      self.add(e, what)

  def raise_first(self) -> None:
    """Raises the first error recorded, if any."""
    if self.first is not None:
      raise self.first
