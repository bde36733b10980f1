"""Preemption notices: SIGTERM turned into a flag the training loop polls.

Cloud TPU/GPU VMs and batch schedulers announce a preemption with SIGTERM
and kill the process some seconds later. :class:`PreemptionNotice` replaces
the default SIGTERM action (die at once) by setting a flag;
``CheckpointSaverHook`` reads the flag before each step, agrees on a step
with the other processes through ``coord.agree_preemption_step`` (or Orbax's
``CheckpointManager.reached_preemption`` when JAX's preemption service runs),
saves that step, waits until it is written and stops the loop cleanly.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Optional, Sequence, Set

from jaxhooks import signal_handlers

__all__ = ["PreemptionNotice", "preemption_reached"]

log = logging.getLogger("jaxhooks")


class PreemptionNotice:
  """Records that a preemption signal arrived.

  Args:
    signals: the signals that announce a preemption (SIGTERM by default).

  ``install()`` sets the handlers (only possible on the main thread; off it
  the notice stays uninstalled and says so), ``uninstall()`` puts the
  previous ones back. ``notify()`` is what the handler calls; a test or a
  cluster agent may call it too.

  Example:
    >>> notice = PreemptionNotice()
    >>> notice.received
    False
    >>> notice.notify()
    >>> notice.received, notice.signal_name
    (True, 'notify()')
  """

  def __init__(self, signals: Sequence[int] = (signal.SIGTERM,)):
    self._signals = tuple(signals)
    self._subscribed: Set[int] = set()   # signals handled by this notice
    self._event = threading.Event()
    self.signal_name: Optional[str] = None
    self._signum: Any = None
    self._acted = False
    #: Called after a notice is recorded (see :meth:`forward_to`).
    self.on_notify = None

  @property
  def received(self) -> bool:
    return self._event.is_set()

  @property
  def installed(self) -> bool:
    return bool(self._subscribed)

  def notify(self, signum: Any = None, frame: Any = None) -> None:
    """Records a preemption notice (the signal handler)."""
    del frame
    self._signum = signum
    self.signal_name = ("notify()" if signum is None
                        else signal.Signals(signum).name)
    self._event.set()
    if self.on_notify is not None:
      self.on_notify()

  def forward_to(self, callback: Any) -> None:
    """Calls ``callback()`` at every notice from now on, and at once if a
    notice is already there (one that came before the session started)."""
    self.on_notify = callback
    if callback is not None and self.received:
      callback()

  def clear(self) -> None:
    self._event.clear()
    self.signal_name = None
    self._signum = None
    self._acted = False

  def install(self) -> bool:
    """Installs the handlers; returns False off the main thread."""
    if self._subscribed:
      return True
    if threading.current_thread() is not threading.main_thread():
      log.warning("Preemption signals are not handled: signal handlers can "
                  "only be installed from the main thread.")
      return False
    for sig in self._signals:
      signal_handlers.subscribe(sig, self.notify)
      self._subscribed.add(sig)
    return True

  def uninstall(self) -> None:
    """Stops handling the signals; once no notice handles a signal, the
    handler that was there before the first one is back."""
    subscribed, self._subscribed = self._subscribed, set()
    unhandled = self.received and self._signum is not None and not self._acted
    for sig in subscribed:
      signal_handlers.unsubscribe(sig, self.notify,
                                  unhandled=unhandled and sig == self._signum)

  def acted_on(self) -> None:
    """Records that the notice was acted on (its save is written): it is
    not handed on to a later session."""
    self._acted = True

  def __repr__(self) -> str:
    return (f"PreemptionNotice(received={self.received}, "
            f"installed={self.installed})")


def preemption_reached(coord: Any, notice: PreemptionNotice, step: int, *,
                       manager: Any = None) -> bool:
  """True when the call that completes ``step`` is the agreed save step.

  One process: as soon as the notice is there. Several: the step that
  ``coord.agree_preemption_step`` returns on all of them, or the sync point
  of JAX's preemption service that ``manager.reached_preemption`` reports.

  Example:
    >>> from jaxhooks.coord import Coordinator
    >>> notice = PreemptionNotice()
    >>> preemption_reached(Coordinator(), notice, 5)
    False
    >>> notice.notify()
    >>> preemption_reached(Coordinator(), notice, 6)
    True
  """
  agreed = coord.agree_preemption_step(step, notified=notice.received)
  if agreed is not None and int(agreed) == step:
    return True
  if manager is not None and getattr(coord, "process_count", 1) > 1:
    return bool(manager.reached_preemption(step))
  return False
