"""The one timer of jaxhooks: trigger every N global steps or every N seconds.

Step triggers fire on global steps that are multiples of N, so they land on
the same steps across restarts and on every process. Time triggers fire at
the first step asked about and then once at least N seconds have passed on
an injectable clock.

Every hook with a period (``every_n_iter``, ``save_steps``, ``save_secs`` …)
holds one :class:`SecondOrStepTimer`; no hook re-implements the rule.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Tuple, Union

from jaxhooks.hook import NEVER

__all__ = ["SecondOrStepTimer", "TimerTriggered", "Clock", "check_period"]

Clock = Callable[[], float]


def check_period(name: str, value, *, allow_none: bool = True,
                 allow_zero: bool = False):
  """Returns ``value`` if it is a valid period, else raises ``ValueError``.

  Example:
    >>> check_period("every_n_iter", 100)
    100
  """
  if value is None:
    if allow_none:
      return None
    raise ValueError(f"`{name}` must be given, got None.")
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(f"`{name}` must be a number, got {value!r}.")
  if value < 0 or (value == 0 and not allow_zero) or value != value:
    raise ValueError(f"`{name}` must be positive, got {value!r}.")
  return value


class SecondOrStepTimer:
  """Triggers every ``every_steps`` global steps or every ``every_secs``.

  Args:
    every_secs: seconds between triggers (float), or ``None``.
    every_steps: global steps between triggers (int), or ``None``.
    clock: returns the time in seconds; ``time.monotonic`` by default.
      Tests pass a fake clock.
    names: the argument names to use in error messages
      (``("every_n_secs", "every_n_iter")`` for ``LoggingTensorHook`` …).

  Exactly one of ``every_secs`` and ``every_steps`` must be given.

  Example:
    >>> timer = SecondOrStepTimer(every_steps=100)
    >>> [s for s in range(1, 301) if timer.should_trigger_for_step(s)]
    [100, 200, 300]
    >>> timer.next_trigger_step(100)
    200
    >>> t = [0.0]
    >>> timer = SecondOrStepTimer(every_secs=10, clock=lambda: t[0])
    >>> timer.should_trigger_for_step(1)
    True
    >>> timer.update_last_triggered_step(1)
    (None, None)
    >>> t[0] = 12.5
    >>> timer.should_trigger_for_step(7)
    True
    >>> timer.update_last_triggered_step(7)
    (12.5, 6)
  """

  def __init__(self, every_secs: Optional[float] = None,
               every_steps: Optional[int] = None, *,
               clock: Optional[Clock] = None,
               names: Tuple[str, str] = ("every_secs", "every_steps")):
    secs_name, steps_name = names
    if (every_secs is None) == (every_steps is None):
      raise ValueError(
          f"Exactly one of `{secs_name}` and `{steps_name}` must be given, "
          f"got {secs_name}={every_secs!r}, {steps_name}={every_steps!r}.")
    check_period(secs_name, every_secs)
    check_period(steps_name, every_steps)
    if every_steps is not None and int(every_steps) != every_steps:
      raise ValueError(
          f"`{steps_name}` must be a whole number, got {every_steps!r}.")
    self._every_secs = None if every_secs is None else float(every_secs)
    self._every_steps = None if every_steps is None else int(every_steps)
    self._clock = clock or time.monotonic
    self._last_step: Optional[int] = None
    self._last_time: Optional[float] = None
    self._shared = False
    self._agreed_step: Optional[int] = None
    self._claimed = False

  @property
  def every_secs(self) -> Optional[float]:
    return self._every_secs

  @property
  def every_steps(self) -> Optional[int]:
    return self._every_steps

  @property
  def clock(self) -> Clock:
    return self._clock

  def reset(self) -> None:
    """Forgets the last trigger."""
    self._last_step = None
    self._last_time = None
    self._claimed = False

  def should_trigger_for_step(self, step: int) -> bool:
    """True when the timer should fire at global step ``step``."""
    if step == self._last_step:
      return False
    if self._every_steps is not None:
      return step % self._every_steps == 0
    if self._shared:
      return step == self._agreed_step
    return self.time_due()

  def claim(self, step: int) -> bool:
    """``should_trigger_for_step``, and when it fires, no further trigger
    until ``update_last_triggered_step``: for a hook whose values may reach
    its ``after_run`` a call late (lagged fetches).

    Example:
      >>> t = [0.0]
      >>> timer = SecondOrStepTimer(every_secs=10, clock=lambda: t[0])
      >>> timer.claim(1), timer.claim(2)
      (True, False)
      >>> timer.update_last_triggered_step(1)
      (None, None)
    """
    if self._claimed or not self.should_trigger_for_step(step):
      return False
    self._claimed = True
    return True

  def due(self) -> bool:
    """For a time timer: whether a call now may fire it. A shared timer
    fires only at agreed check steps (calls that run every hook): False.

    Example:
      >>> t = [0.0]
      >>> timer = SecondOrStepTimer(every_secs=10, clock=lambda: t[0])
      >>> timer.update_last_triggered_step(0)
      (None, None)
      >>> t[0] = 9.0
      >>> timer.due()
      False
      >>> t[0] = 10.0
      >>> timer.due()
      True
    """
    if self._every_secs is None or self._shared:
      return False
    return self.time_due()

  def time_due(self) -> bool:
    """For a time timer: whether its period has passed on this process."""
    assert self._every_secs is not None, "time_due is for time timers only"
    return (self._last_time is None
            or self._clock() - self._last_time >= self._every_secs)

  def share_decisions(self) -> None:
    """Makes a time timer fire only where :meth:`agree` says, so that every
    process of a job fires at the same step (process 0's clock decides)."""
    if self._every_secs is None:
      raise ValueError("Only a time timer (`every_secs`) shares decisions.")
    self._shared = True

  def agree(self, step: int, due: bool) -> None:
    """Records the agreed decision for ``step`` (see ``share_decisions``)."""
    self._agreed_step = step if due else None

  def update_last_triggered_step(
      self, step: int) -> Tuple[Optional[float], Optional[int]]:
    """Records a trigger at ``step``.

    Returns:
      ``(elapsed_secs, elapsed_steps)`` since the previous trigger, or
      ``(None, None)`` for the first one.
    """
    self._claimed = False
    now = self._clock()
    elapsed: Tuple[Optional[float], Optional[int]] = (None, None)
    if self._last_time is not None and self._last_step is not None:
      elapsed = (now - self._last_time, step - self._last_step)
    self._last_time = now
    self._last_step = step
    return elapsed

  def last_triggered_step(self) -> Optional[int]:
    return self._last_step

  def next_trigger_step(self, step: int) -> Optional[int]:
    """The first global step after ``step`` that a step timer fires on;
    ``None`` for a time timer (it cannot be known in advance)."""
    if self._every_steps is None:
      return None
    n = self._every_steps
    return (step // n + 1) * n

  def state_dict(self) -> dict:
    """What a checkpoint keeps: the last trigger step (times do not survive
    a restart; a time timer fires at the first step after one)."""
    return {"last_step": -1 if self._last_step is None else self._last_step}

  def load_state_dict(self, state: dict) -> None:
    last = int(state["last_step"])
    self._last_step = None if last < 0 else last
    self._last_time = None

  def __repr__(self) -> str:
    period = (f"every_steps={self._every_steps}"
              if self._every_steps is not None
              else f"every_secs={self._every_secs}")
    return f"SecondOrStepTimer({period}, last_step={self._last_step})"


class TimerTriggered:
  """For hooks that act when ``self._timer`` fires (a
  :class:`SecondOrStepTimer`, or ``None``: never): their
  ``next_step_of_interest`` and ``due`` follow from the timer. Put it before
  ``Hook`` in the bases.

  Example:
    >>> class Every(TimerTriggered):
    ...   def __init__(self, timer): self._timer = timer
    >>> Every(SecondOrStepTimer(every_steps=10)).next_step_of_interest(12)
    20
    >>> Every(None).next_step_of_interest(12), Every(None).due()
    (inf, False)
  """

  _timer: Optional[SecondOrStepTimer]

  def next_step_of_interest(self, step: int) -> Union[int, float, None]:
    timer = self._timer
    return NEVER if timer is None else timer.next_trigger_step(step)

  def due(self) -> bool:
    return self._timer is not None and self._timer.due()

  def timers(self) -> tuple:
    return () if self._timer is None else (self._timer,)
