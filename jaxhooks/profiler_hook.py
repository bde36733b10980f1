"""``ProfilerHook``: ``jax.profiler`` traces of chosen training steps."""

from __future__ import annotations

import os
from typing import Any, List, Optional, Tuple

import jax

from jaxhooks.hook import (GLOBAL_STEP, NEVER, Hook, RunArgs, RunContext,
                           RunValues, Session)
from jaxhooks.timer import Clock, SecondOrStepTimer, TimerTriggered

__all__ = ["ProfilerHook"]


def _check_step(name: str, value: Any, minimum: int) -> Optional[int]:
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
  return value


class ProfilerHook(TimerTriggered, Hook):
  """Captures ``jax.profiler`` traces of windows of ``num_steps`` steps.

  A window starts at global step ``start_step`` (once), or on every
  ``save_steps``-th global step, or every ``save_secs`` seconds. Each window
  is traced into its own directory, ``output_dir/step_<first step>``, in the
  layout TensorBoard's profile plugin and XProf read
  (``plugins/profile/<run>/<host>.xplane.pb``); view it with
  ``tensorboard --logdir output_dir``. Each traced step is marked with a
  ``jax.profiler.StepTraceAnnotation("train", step_num=step)``, so the trace
  viewer's step markers carry global steps.

  The hook waits for the device twice per window and never otherwise: before
  the first step of the window (so earlier steps' work stays out of the
  trace) and after its last step (so all of the window's work is in it). A
  window cut short by the end of training is closed in ``end`` (or
  ``on_exception``). Every process traces its own host.

  Args:
    save_steps: start a window on global steps that are multiples of this.
    save_secs: start a window when this many seconds have passed.
    output_dir: the directory of the traces.
    start_step: start one window at this global step.
    num_steps: the steps per window (at most ``save_steps``).
    name: the name of the step annotations.
    clock: time source for ``save_secs`` (tests inject one).

  Exactly one of ``save_steps``, ``save_secs`` and ``start_step`` must be
  given.

  Example:
    >>> import tempfile, jax, jax.numpy as jnp
    >>> import jaxhooks as jh
    >>> hook = jh.ProfilerHook(start_step=3, num_steps=2,
    ...                        output_dir=tempfile.mkdtemp())
    >>> step = jh.wrap(jax.jit(lambda s, b: ({"step": s["step"] + 1}, {})),
    ...                hooks=[jh.StopAtStepHook(last_step=6), hook])
    >>> state = step.begin({"step": jnp.array(0)})
    >>> while not step.should_stop:
    ...   state, _, _ = step(state)
    >>> state = step.end(state)
    >>> [(first, last) for first, last, _ in hook.traces]
    [(3, 4)]
  """

  def __init__(self, save_steps: Optional[int] = None,
               save_secs: Optional[float] = None,
               output_dir: Optional[str] = None,
               start_step: Optional[int] = None, num_steps: int = 1, *,
               name: str = "train", clock: Optional[Clock] = None):
    given = [n for n, v in (("save_steps", save_steps),
                            ("save_secs", save_secs),
                            ("start_step", start_step)) if v is not None]
    if len(given) != 1:
      raise ValueError(
          "Exactly one of `save_steps`, `save_secs` and `start_step` must be "
          f"given, got save_steps={save_steps!r}, save_secs={save_secs!r}, "
          f"start_step={start_step!r}.")
    if output_dir is None or not isinstance(output_dir, (str, os.PathLike)):
      raise ValueError(f"`output_dir` must be a path, got {output_dir!r}.")
    self._num_steps = _check_step("num_steps", num_steps, 1)
    self._start_step = _check_step("start_step", start_step, 1)
    self._timer = None
    if start_step is None:
      self._timer = SecondOrStepTimer(every_secs=save_secs,
                                      every_steps=save_steps, clock=clock,
                                      names=("save_secs", "save_steps"))
      if save_steps is not None and num_steps > save_steps:
        raise ValueError(
            f"`num_steps` must be at most `save_steps` ({save_steps}) so that "
            f"windows do not overlap, got {num_steps!r}.")
    self._output_dir = os.fspath(output_dir)
    self._name = str(name)
    self._window: Optional[Tuple[int, int, str]] = None  # first, last, dir
    self._annotation: Any = None
    self._last_traced: Optional[int] = None
    self.traces: List[Tuple[int, int, str]] = []

  @property
  def output_dir(self) -> str:
    return self._output_dir

  @property
  def tracing(self) -> bool:
    """True while a trace is being recorded."""
    return self._window is not None

  def _starts_window(self, step: int) -> bool:
    if self._timer is None:
      return step == self._start_step
    if self._timer.should_trigger_for_step(step):
      self._timer.update_last_triggered_step(step)
      return True
    return False

  def next_step_of_interest(self, step: int):
    if self._window is not None:
      return step + 1   # every traced step is annotated
    if self._timer is None:
      return self._start_step if step < self._start_step else NEVER
    return self._timer.next_trigger_step(step)

  def before_run(self, run_context: RunContext) -> Optional[RunArgs]:
    step = run_context.step
    if self._window is None and self._starts_window(step):
      jax.block_until_ready(run_context.session.state)   # edge: sync
      log_dir = os.path.join(self._output_dir, f"step_{step}")
      jax.profiler.start_trace(log_dir)
      self._window = (step, step + self._num_steps - 1, log_dir)
      self._last_traced = None
    if self._window is None:
      return None
    self._annotation = jax.profiler.StepTraceAnnotation(self._name,
                                                        step_num=step)
    self._annotation.__enter__()
    if step == self._window[1]:
      return RunArgs(fetches=GLOBAL_STEP)   # edge: the step's work is done
    return None

  def after_run(self, run_context: RunContext, run_values: RunValues) -> None:
    if self._window is None:
      return
    self._close_annotation()
    self._last_traced = run_context.step
    if run_context.step == self._window[1]:
      self._stop(run_context.step)

  def _close_annotation(self) -> None:
    if self._annotation is not None:
      self._annotation.__exit__(None, None, None)
      self._annotation = None

  def _stop(self, last_step: int) -> None:
    first, _, log_dir = self._window
    self._window = None
    jax.profiler.stop_trace()
    self.traces.append((first, last_step, log_dir))

  def end(self, session: Session) -> None:
    if self._window is not None:
      self._close_annotation()
      jax.block_until_ready(session.state)
      last = self._last_traced
      self._stop(self._window[0] if last is None else last)

  def on_exception(self, session: Session, exc: BaseException) -> None:
    self.end(session)

  def state_dict(self) -> Optional[dict]:
    return None if self._timer is None else self._timer.state_dict()

  def load_state_dict(self, state: dict) -> None:
    if self._timer is not None:
      self._timer.load_state_dict(state)
