"""``ProfilerHook``: ``jax.profiler`` traces of chosen training steps."""

from __future__ import annotations

import math
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


def _overlap(a: "ProfilerHook", b: "ProfilerHook") -> Optional[str]:
  """Why the windows of ``a`` and ``b`` may share a step, or ``None`` when
  they cannot (one-off windows and step periods only)."""
  for h in (a, b):
    if h._timer is not None and h._timer.every_secs is not None:
      return f"{h!r} starts windows by the clock, at any step"
  def once(h):
    s = h._start_step
    return None if s is None else (s, s + h._num_steps - 1)
  def every(h):
    return None if h._timer is None else h._timer.every_steps
  def after(h):   # periodic windows start after this step
    return h._start_step or 0
  oa, ob = once(a), once(b)
  if oa and ob and max(oa[0], ob[0]) <= min(oa[1], ob[1]):
    return f"both trace step {max(oa[0], ob[0])}"
  pa, pb = every(a), every(b)
  if pa and pb:
    lcm = pa * pb // math.gcd(pa, pb)
    return f"both trace step {(max(after(a), after(b)) // lcm + 1) * lcm}"
  for o, h in ((oa, b), (ob, a)):
    n = every(h)
    if o and n:
      low = max(o[0] - h._num_steps + 1, after(h) + 1)
      first = -(-low // n) * n   # the first window of h that may reach o
      if first <= o[1]:
        return f"both trace step {max(first, o[0])}"
  return None


class ProfilerHook(TimerTriggered, Hook):
  """Captures ``jax.profiler`` traces of windows of ``num_steps`` steps.

  A window starts at global step ``start_step`` (once), and/or on every
  ``save_steps``-th global step, or every ``save_secs`` seconds. Given with
  a period, ``start_step`` comes first and the period follows it (CLU's
  "at step 10, then every hour": ``start_step=10, save_secs=3600``): no
  periodic window starts before or at ``start_step``, and the seconds count
  from it. As TensorFlow's ``ProfilerHook`` does, a periodic window never
  starts on the first call of a session (its steps include compilation);
  the seconds of ``save_secs`` count from that call. An explicit
  ``start_step`` is traced wherever it falls. A trigger that comes while a
  window is open is skipped.

  Each window is traced into its own directory,
  ``output_dir/step_<first step>``, in the layout TensorBoard's profile
  plugin and XProf read (``plugins/profile/<run>/<host>.xplane.pb``); view
  it with ``tensorboard --logdir output_dir``. Each traced step is marked
  with a ``jax.profiler.StepTraceAnnotation("train", step_num=step)``, so the
  trace viewer's step markers carry global steps.

  ``jax.profiler`` records one trace at a time in a process: two
  ``ProfilerHook``s whose windows may overlap (any two periodic ones, a
  ``save_secs`` one and any other, one-off windows that share a step) are
  refused when the session starts, with a ``ValueError`` naming both.

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

  At least one of ``start_step``, ``save_steps`` and ``save_secs`` must be
  given, and at most one of ``save_steps`` and ``save_secs``.

  Example:
    >>> import tempfile, jax, jax.numpy as jnp
    >>> import jaxhooks as jh
    >>> hook = jh.ProfilerHook(start_step=3, num_steps=2, save_steps=5,
    ...                        output_dir=tempfile.mkdtemp())
    >>> step = jh.wrap(jax.jit(lambda s, b: ({"step": s["step"] + 1}, {})),
    ...                hooks=[jh.StopAtStepHook(last_step=11), hook])
    >>> state = step.begin({"step": jnp.array(0)})
    >>> while not step.should_stop:
    ...   state, _, _ = step(state)
    >>> state = step.end(state)
    >>> [(first, last) for first, last, _ in hook.traces]
    [(3, 4), (5, 6), (10, 11)]
  """

  def __init__(self, save_steps: Optional[int] = None,
               save_secs: Optional[float] = None,
               output_dir: Optional[str] = None,
               start_step: Optional[int] = None, num_steps: int = 1, *,
               name: str = "train", clock: Optional[Clock] = None):
    if save_steps is not None and save_secs is not None:
      raise ValueError(
          "At most one of `save_steps` and `save_secs` may be given, got "
          f"save_steps={save_steps!r}, save_secs={save_secs!r}.")
    if save_steps is None and save_secs is None and start_step is None:
      raise ValueError(
          "At least one of `start_step`, `save_steps` and `save_secs` must "
          "be given, got None for all three.")
    if output_dir is None or not isinstance(output_dir, (str, os.PathLike)):
      raise ValueError(f"`output_dir` must be a path, got {output_dir!r}.")
    _check_step("num_steps", num_steps, 1)
    self._num_steps = num_steps
    self._start_step = _check_step("start_step", start_step, 1)
    self._timer = None
    if save_steps is not None or save_secs is not None:
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
    self._first_call = True
    self.traces: List[Tuple[int, int, str]] = []

  @property
  def output_dir(self) -> str:
    return self._output_dir

  @property
  def tracing(self) -> bool:
    """True while a trace is being recorded."""
    return self._window is not None

  def _starts_window(self, step: int, first_call: bool) -> bool:
    timer = self._timer
    if step == self._start_step:
      if timer is not None:
        timer.update_last_triggered_step(step)   # the period starts here
      return True
    if timer is None or (self._start_step is not None
                         and step < self._start_step):
      return False
    if first_call:   # compilation: no periodic window (TF's rule)
      timer.update_last_triggered_step(step)
      return False
    if timer.should_trigger_for_step(step):
      timer.update_last_triggered_step(step)
      return True
    return False

  def next_step_of_interest(self, step: int):
    if self._window is not None:
      return step + 1   # every traced step is annotated
    if self._start_step is not None and step < self._start_step:
      return self._start_step
    if self._timer is None:
      return NEVER
    return self._timer.next_trigger_step(step)

  def restore(self, state: Any, hooks: tuple) -> None:
    # The hook list is known here: refuse another ProfilerHook whose
    # windows may overlap ours (jax.profiler traces one at a time).
    for other in hooks:
      if isinstance(other, ProfilerHook) and other is not self:
        why = _overlap(self, other)
        if why is not None:
          raise ValueError(
              f"Two ProfilerHooks in `hooks` may trace at the same time "
              f"({why}), and jax.profiler records one trace at a time: "
              f"{self!r} and {other!r}. Use one ProfilerHook: `start_step` "
              "with `save_steps` or `save_secs` traces a window at a step, "
              "then periodic ones.")
    return None

  def after_create_session(self, session: Session, coord: Any) -> None:
    self._first_call = True

  def before_run(self, run_context: RunContext) -> Optional[RunArgs]:
    step = run_context.step
    first_call, self._first_call = self._first_call, False
    if self._window is None and self._starts_window(step, first_call):
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
    assert self._window is not None, "callers stop an open window"
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

  def __repr__(self) -> str:
    timer, args = self._timer, []
    if self._start_step is not None:
      args.append(f"start_step={self._start_step}")
    if timer is not None and timer.every_steps is not None:
      args.append(f"save_steps={timer.every_steps}")
    if timer is not None and timer.every_secs is not None:
      args.append(f"save_secs={timer.every_secs:g}")
    args += [f"num_steps={self._num_steps}",
             f"output_dir={self._output_dir!r}"]
    return f"ProfilerHook({', '.join(args)})"

  def load_state_dict(self, state: dict) -> None:
    if self._timer is not None:
      self._timer.load_state_dict(state)
