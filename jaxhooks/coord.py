"""The stop coordinator handed to ``after_create_session(session, coord)``.

In one process it records stop requests and their reasons. Decisions that
follow from the global step alone (``StopAtStepHook``) are the same on every
process by construction; ``request_stop`` from a host-local cause is what a
multi-process coordinator has to agree on.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Union

import jax

__all__ = ["Coordinator"]


class Coordinator:
  """Collects stop requests for one training session.

  Example:
    >>> coord = Coordinator()
    >>> coord.should_stop()
    False
    >>> coord.request_stop("StopAtStepHook: step 10 reached last_step 10")
    >>> coord.should_stop(), coord.stop_reasons
    (True, ('StopAtStepHook: step 10 reached last_step 10',))
  """

  def __init__(self, *, process_index: Optional[int] = None,
               process_count: Optional[int] = None):
    self._process_index = (jax.process_index() if process_index is None
                           else process_index)
    self._process_count = (jax.process_count() if process_count is None
                           else process_count)
    self._reasons: List[str] = []
    self._errors: List[BaseException] = []

  @property
  def process_index(self) -> int:
    return self._process_index

  @property
  def process_count(self) -> int:
    return self._process_count

  @property
  def is_primary(self) -> bool:
    return self._process_index == 0

  #: Steps that are multiples of this are check steps, where processes
  #: agree on host-local decisions; ``None`` in a single process.
  check_every_n_steps: Optional[int] = None

  #: Set by :meth:`wake` (a preemption notice, a stop request); the runner
  #: then calls every hook on its next call and clears it.
  awake: bool = False

  def wake(self) -> None:
    """Makes the next call run every hook, even one that ends before any
    hook's ``next_step_of_interest``: for host-local events a hook must see
    promptly (a preemption notice). Safe to call from a signal handler."""
    self.awake = True

  def request_stop(self, reason: Any = "stop requested",
                   *, deterministic: bool = False) -> None:
    """Asks the loop to stop after the current step.

    Args:
      reason: recorded in ``stop_reasons``. An exception, or a
        ``sys.exc_info()`` tuple (a data thread's or a hook's failure, as
        TensorFlow's ``coord.request_stop(ex)``)
        also stops the loop, and is raised when the session ends: from
        ``end()``, after every hook's ``end`` ran.
      deterministic: the same request is made on every process at this step
        (it follows from the global step); in one process every request is.

    Example:
      >>> coord = Coordinator()
      >>> coord.request_stop(OSError("data thread: disk read failed"))
      >>> coord.should_stop(), coord.errors
      (True, (OSError('data thread: disk read failed'),))
    """
    del deterministic  # one process: every request takes effect at once
    self._reasons.append(self._record(reason))
    self.wake()      # a call without hooks must see it too

  def _record(self, reason: Any) -> str:
    """Keeps an exception given as a stop reason (or TensorFlow's
    ``sys.exc_info()`` tuple of one); returns the reason text."""
    if (isinstance(reason, tuple) and len(reason) == 3
        and isinstance(reason[1], BaseException)):
      reason = reason[1]
    if isinstance(reason, BaseException):
      self._errors.append(reason)
      return f"{type(reason).__name__}: {reason}"
    return str(reason)

  @property
  def errors(self) -> tuple:
    """The exceptions given to ``request_stop``, raised when the session
    ends."""
    return tuple(self._errors)

  def notify_preemption(self) -> None:
    """Records a preemption notice as it arrives (``CheckpointSaverHook``
    forwards its notice here). In one process the next call runs every
    hook (:meth:`wake`), and the saver saves the step it completes. Safe to
    call from a signal handler."""
    self.wake()

  def next_preemption_step(self, step: int, *,
                           notified: bool) -> Optional[int]:
    """The earliest step after ``step`` at which a preemption save can be
    due: ``CheckpointSaverHook.next_step_of_interest`` answers it. In one
    process the next step, once ``notified``; a multi-process coordinator
    answers ``None``, so that a notice seen by one process changes no call
    (the check step that shares it ends a call on every process anyway).

    Example:
      >>> Coordinator().next_preemption_step(7, notified=True)
      8
    """
    return int(step) + 1 if notified else None

  def bind(self, hooks: Sequence[Any]) -> None:
    """Called by the runner after restore with the hooks it runs."""

  def watch(self, progress: Callable[[], Optional[int]]) -> None:
    """Called by the runner after :meth:`bind` with a function that returns
    the loop's step while it runs and ``None`` after; a multi-process
    coordinator starts its watchdog with it."""

  def unwatch(self) -> None:
    """Called by the runner when the loop has ended (``end`` or
    ``abort``): a watchdog thread stops before the interpreter exits."""

  def check(self, step: int) -> None:
    """Called before the hooks of a check step (never in one process)."""

  def global_step(self) -> Optional[int]:
    """The largest step any other process reported, or ``None`` when no
    other process exists."""
    return None

  def should_stop(self) -> bool:
    return bool(self._reasons)

  def agree_preemption_step(self, step: int, *,
                            notified: bool) -> Optional[int]:
    """The step at which every process saves and stops after a preemption.

    Called by ``CheckpointSaverHook`` before each call that runs hooks, with
    the step that call completes and whether this process received a
    preemption notice (SIGTERM). In one process the agreed step is that step
    as soon as the notice is there (the notice calls :meth:`wake`, so the
    next call runs the hooks). A multi-process coordinator overrides this
    to agree on one step for all processes (without a collective at every
    step) and returns the same value on every process; the agreed step must
    be a check step (a multiple of ``check_every_n_steps``), where the
    runner always runs every hook.

    Args:
      step: the global step the coming call completes.
      notified: whether this process received a preemption notice.

    Returns:
      ``step`` when this call's step is the agreed one, else ``None``.

    Example:
      >>> Coordinator().agree_preemption_step(7, notified=True)
      7
    """
    return int(step) if notified else None

  @property
  def stop_reasons(self) -> tuple:
    return tuple(self._reasons)

  def __repr__(self) -> str:
    return (f"Coordinator(process={self._process_index}/"
            f"{self._process_count}, stop_reasons={self._reasons})")
