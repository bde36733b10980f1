"""Hooks that decide when training stops or starts: ``StopAtStepHook`` and
``GlobalStepWaiterHook``."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional, overload

from jaxhooks.hook import NEVER, Hook, RunContext, RunValues, Session

__all__ = ["StopAtStepHook", "GlobalStepWaiterHook"]

log = logging.getLogger("jaxhooks")


@overload
def _check_step_arg(name: str, value: None, *, minimum: int) -> None: ...
@overload
def _check_step_arg(name: str, value: int, *, minimum: int) -> int: ...
@overload
def _check_step_arg(name: str, value: Any, *, minimum: int) -> Optional[int]:
  ...


def _check_step_arg(name: str, value: Any, *, minimum: int) -> Optional[int]:
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, int) and not (
      hasattr(value, "__index__")):
    raise ValueError(f"`{name}` must be an int, got {value!r}.")
  value = int(value)
  if value < minimum:
    raise ValueError(f"`{name}` must be >= {minimum}, got {value!r}.")
  return value


class StopAtStepHook(Hook):
  """Stops when the completed global step reaches a target.

  Args:
    num_steps: steps to run from the step training starts (or restarts
      without a saved target) at.
    last_step: the global step to stop at.

  Exactly one of them must be given. Training stops right after the step
  that reaches the target, never a step late or early, and runs zero steps
  when the restored step is already at or past it. The target is part of
  the hook's checkpointed state, so a restarted ``num_steps`` run stops where
  the first run would have.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import jaxhooks as jh
    >>> step = jh.wrap(jax.jit(lambda s, b: ({"step": s["step"] + 1}, {})),
    ...                hooks=[jh.StopAtStepHook(num_steps=5)])
    >>> state = step.begin({"step": jnp.array(10)})
    >>> stop = step.should_stop
    >>> while not stop:
    ...   state, _, stop = step(state)
    >>> step.step
    15
  """

  def __init__(self, num_steps: Optional[int] = None,
               last_step: Optional[int] = None):
    if (num_steps is None) == (last_step is None):
      raise ValueError(
          "Exactly one of `num_steps` and `last_step` must be given, got "
          f"num_steps={num_steps!r}, last_step={last_step!r}.")
    self._num_steps = _check_step_arg("num_steps", num_steps, minimum=0)
    self._given_last_step = _check_step_arg("last_step", last_step, minimum=0)
    self._last_step = self._given_last_step
    self._loaded_last_step: Optional[int] = None

  @property
  def last_step(self) -> Optional[int]:
    """The target step (known after ``after_create_session``)."""
    return self._last_step

  def begin(self) -> None:
    if self._given_last_step is None:
      self._last_step = self._loaded_last_step

  def _target(self) -> int:
    assert self._last_step is not None, "set by after_create_session"
    return self._last_step

  def after_create_session(self, session: Session, coord: Any) -> None:
    if self._last_step is None:
      assert self._num_steps is not None, "one of the two is given"
      self._last_step = session.step + self._num_steps
    if session.step >= self._target():
      coord.request_stop(
          f"StopAtStepHook: restored step {session.step} is at or past "
          f"last_step {self._last_step}", deterministic=True)

  def after_run(self, run_context: RunContext,
                run_values: RunValues) -> None:
    if run_context.step >= self._target():
      run_context.request_stop(deterministic=True)

  def next_step_of_interest(self, step: int):
    target = self._target()
    return target if target > step else NEVER

  def state_dict(self) -> Optional[dict]:
    if self._given_last_step is not None or self._last_step is None:
      return None
    return {"last_step": self._last_step}

  def load_state_dict(self, state: dict) -> None:
    if self._given_last_step is None:
      self._loaded_last_step = self._last_step = int(state["last_step"])


class GlobalStepWaiterHook(Hook):
  """Delays the first step until the global step reaches a value.

  A TF1 worker waits for the chief to make progress. Here the global step of
  another process comes from ``step_source`` (by default the coordinator's
  ``global_step()``, the largest step of all processes in a multi-process
  job). In a single process nobody else advances the step, so waiting for
  a step ahead of our own raises at once instead of hanging.

  Args:
    wait_until_step: the step to wait for.
    step_source: returns the current global step of the job; optional.
    poll_secs: seconds between polls.
    timeout_secs: give up with ``TimeoutError`` after this long (``None``:
      wait as long as it takes).
    sleep, clock: injectable for tests.

  Example:
    >>> import jaxhooks as jh
    >>> steps = iter([0, 40, 100])
    >>> hook = jh.GlobalStepWaiterHook(100, step_source=lambda: next(steps),
    ...                                sleep=lambda s: None)
    >>> hook.before_run(jh.RunContext(jh.RunArgs(), jh.Session(None, 0), 1, 0))
    >>> hook.waited_polls
    3
  """

  def __init__(self, wait_until_step: int, *,
               step_source: Optional[Callable[[], int]] = None,
               poll_secs: float = 0.5, timeout_secs: Optional[float] = None,
               sleep: Callable[[float], None] = time.sleep,
               clock: Callable[[], float] = time.monotonic):
    self._wait_until_step = _check_step_arg(
        "wait_until_step", wait_until_step, minimum=0)
    if isinstance(poll_secs, bool) or not isinstance(poll_secs, (int, float)):
      raise ValueError(f"`poll_secs` must be a number, got {poll_secs!r}.")
    if poll_secs <= 0:
      raise ValueError(f"`poll_secs` must be positive, got {poll_secs!r}.")
    if timeout_secs is not None and timeout_secs <= 0:
      raise ValueError(
          f"`timeout_secs` must be positive or None, got {timeout_secs!r}.")
    self._step_source = step_source
    self._poll_secs = poll_secs
    self._timeout_secs = timeout_secs
    self._sleep = sleep
    self._clock = clock
    self._done = False
    self._coord = None
    self.waited_polls = 0

  def begin(self) -> None:
    self._done = self._wait_until_step <= 0

  def after_create_session(self, session: Session, coord: Any) -> None:
    self._coord = coord
    if session.step >= self._wait_until_step:
      self._done = True

  def _source(self) -> Callable[[], int]:
    if self._step_source is not None:
      return self._step_source
    coord = self._coord
    if coord is None or coord.global_step() is None:
      raise RuntimeError(
          f"GlobalStepWaiterHook would wait forever for step "
          f"{self._wait_until_step}: in a single process nothing else "
          "advances the step. Pass `step_source=` or lower "
          "`wait_until_step`.")
    return coord.global_step

  def next_step_of_interest(self, step: int):
    return NEVER if self._done else step + 1

  def before_run(self, run_context: RunContext) -> None:
    if self._done:
      return None
    if run_context.start_step >= self._wait_until_step:
      self._done = True
      return None
    source = self._source()
    start = self._clock()
    log.info("Waiting for global step %d before starting training.",
             self._wait_until_step)
    while True:
      self.waited_polls += 1
      current = int(source())
      if current >= self._wait_until_step:
        self._done = True
        return None
      if (self._timeout_secs is not None
          and self._clock() - start >= self._timeout_secs):
        raise TimeoutError(
            f"GlobalStepWaiterHook: global step is {current} after waiting "
            f"`timeout_secs`={self._timeout_secs!r} s for step "
            f"{self._wait_until_step}.")
      self._sleep(self._poll_secs)
