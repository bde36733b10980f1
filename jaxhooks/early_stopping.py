"""``EarlyStoppingHook``: stop when a metric stops improving."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any, Callable, Optional

from jaxhooks import scalars
from jaxhooks.hook import Hook, RunArgs, RunContext, RunValues, Session
from jaxhooks.timer import SecondOrStepTimer, TimerTriggered, check_period

__all__ = ["EarlyStoppingHook"]

log = logging.getLogger("jaxhooks")


class EarlyStoppingHook(TimerTriggered, Hook):
  """Stops training when a metric has not improved for ``patience`` checks.

  Every ``every_n_iter`` global steps the hook reads the metric (with the
  other hooks' fetches of that step, in one ``jax.device_get``) and compares
  it with the best value so far. A value improves when it is lower (``mode
  ='min'``) or higher (``'max'``) than the best by more than ``min_delta``.
  Each check without improvement adds one to the wait count, an improvement
  resets it, and training stops after the check that brings it to
  ``patience``. With a ``baseline`` the best starts there, so the metric has
  ``patience`` checks to beat it. A NaN never improves.

  The counters (best value, its step, the wait count, the stop step, the
  last check) are the hook's ``state_dict``, which checkpoints keep: a
  restarted run stops at the step the uninterrupted run would have, and a
  run restored from a state that had already stopped (its wait count at
  ``patience``) stops at once and trains zero steps, as ``StopAtStepHook``
  does. A restart with a larger ``patience`` trains on from the restored
  counters.

  Args:
    metric: the name of a step output, or a function of ``(state, outputs)``
      returning a scalar; with ``eval_fn``, the key of its dict result.
    mode: ``'min'`` or ``'max'``.
    patience: checks without improvement before stopping (0: stop at the
      first one).
    min_delta: the smallest change that counts as an improvement.
    baseline: the value to beat at first (``None``: the first check sets it).
    every_n_iter: check on global steps that are multiples of this.
    eval_fn: a function of the train state returning the metric, or a dict
      holding ``metric`` (for example a jitted evaluation on held-out data).
      It runs on check steps only.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import jaxhooks as jh
    >>> losses = jnp.array([5., 4., 3., 3., 3.5, 3.2, 1., 1.])  # at step 1..8
    >>> step = jh.wrap(
    ...     jax.jit(lambda s, b: ({"step": s["step"] + 1},
    ...                           {"loss": losses[s["step"]]})),
    ...     hooks=[jh.StopAtStepHook(last_step=8),
    ...            jh.EarlyStoppingHook("loss", patience=3)])
    >>> state = step.begin({"step": jnp.array(0)})
    >>> while not step.should_stop:
    ...   state, _, _ = step(state)
    >>> step.step, step.hooks[1].best, step.hooks[1].best_step
    (6, 3.0, 3)
  """

  _timer: SecondOrStepTimer   # always set: checks every ``every_n_iter``

  def __init__(self, metric: Any, *, mode: str = "min", patience: int = 0,
               min_delta: float = 0.0, baseline: Optional[float] = None,
               every_n_iter: int = 1,
               eval_fn: Optional[Callable[[Any], Any]] = None):
    if not (isinstance(metric, str) or callable(metric)):
      raise TypeError(
          "`metric` must be an output name or a function of (state, "
          f"outputs), got {metric!r}.")
    if eval_fn is not None and not callable(eval_fn):
      raise TypeError(f"`eval_fn` must be callable, got {eval_fn!r}.")
    if mode not in ("min", "max"):
      raise ValueError(f"`mode` must be 'min' or 'max', got {mode!r}.")
    if isinstance(patience, bool) or not isinstance(patience, int) or (
        patience < 0):
      raise ValueError(f"`patience` must be an int >= 0, got {patience!r}.")
    if not isinstance(min_delta, (int, float)) or not min_delta >= 0:
      raise ValueError(f"`min_delta` must be >= 0, got {min_delta!r}.")
    if baseline is not None and not isinstance(baseline, (int, float)):
      raise ValueError(f"`baseline` must be a number, got {baseline!r}.")
    check_period("every_n_iter", every_n_iter, allow_none=False)
    self._timer = SecondOrStepTimer(every_steps=every_n_iter,
                                    names=("every_n_secs", "every_n_iter"))
    self._metric = metric
    self._fetch = self._make_fetch(metric, eval_fn)
    self._sign = 1.0 if mode == "min" else -1.0
    self._mode = mode
    self._patience = patience
    self._min_delta = float(min_delta)
    self._baseline = None if baseline is None else float(baseline)
    self._trigger = False
    self._reset()

  @staticmethod
  def _make_fetch(metric: Any, eval_fn: Optional[Callable]) -> Any:
    if eval_fn is None:
      return metric

    def evaluate(state: Any, outputs: Any) -> Any:
      del outputs
      result = eval_fn(state)
      if isinstance(result, Mapping):
        if metric not in result:
          raise ValueError(
              f"`eval_fn` returned keys {sorted(map(str, result))} without "
              f"`metric` {metric!r}.")
        return result[metric]
      return result
    return evaluate

  def _reset(self) -> None:
    self._timer.reset()
    self._best = self._baseline
    self._best_step: Optional[int] = None
    self._wait = 0
    self.stopped_step: Optional[int] = None

  @property
  def best(self) -> Optional[float]:
    """The best value seen (the baseline until it is beaten)."""
    return self._best

  @property
  def best_step(self) -> Optional[int]:
    """The global step of the best value (``None``: none yet)."""
    return self._best_step

  @property
  def wait(self) -> int:
    """Checks since the last improvement."""
    return self._wait

  def improves(self, value: float) -> bool:
    """True when ``value`` beats the best by more than ``min_delta``."""
    if math.isnan(value):
      return False
    if self._best is None:
      return True
    return self._sign * (self._best - value) > self._min_delta

  def output_names(self) -> dict:
    if self._fetch is self._metric and isinstance(self._metric, str):
      return {"metric": (self._metric,)}
    return {}

  def _exhausted(self) -> bool:
    """The wait count has reached ``patience``: training stops."""
    return self._wait > 0 and self._wait >= self._patience

  def begin(self) -> None:
    self._reset()

  def after_create_session(self, session: Session, coord: Any) -> None:
    if not self._exhausted():
      self.stopped_step = None
      return
    log.info("Early stopping: the restored %s has not improved on %g (step "
             "%s) for %d checks; stopping at step %d.", self._metric_name(),
             self._best, self._best_step, self._wait, session.step)
    coord.request_stop(
        f"EarlyStoppingHook: restored at step {session.step} after "
        f"{self._wait} checks without improvement", deterministic=True)

  def before_run(self, run_context: RunContext) -> Optional[RunArgs]:
    self._trigger = self._timer.should_trigger_for_step(run_context.step)
    return RunArgs(fetches=self._fetch) if self._trigger else None

  def after_run(self, run_context: RunContext,
                run_values: RunValues) -> Optional[bool]:
    if not self._trigger:
      return None
    step = run_context.step
    self._timer.update_last_triggered_step(step)
    value = float(scalars.scalar(run_values.results,
                                 who="EarlyStoppingHook `metric`",
                                 name=self._metric_name()))
    if self.improves(value):
      self._best, self._best_step, self._wait = value, step, 0
      return None
    self._wait += 1
    if not self._exhausted():
      return None
    self.stopped_step = step
    log.info("Early stopping at step %d: %s = %g has not improved on %g "
             "(step %s) for %d checks.", step, self._metric_name(), value,
             self._best, self._best_step, self._wait)
    return True

  def _metric_name(self) -> str:
    return self._metric if isinstance(self._metric, str) else getattr(
        self._metric, "__name__", "metric")

  def state_dict(self) -> dict:
    return {
        "best": self._best,
        "best_step": -1 if self._best_step is None else self._best_step,
        "wait": self._wait,
        "stopped_step": (-1 if self.stopped_step is None
                         else self.stopped_step),
        **self._timer.state_dict(),
    }

  def load_state_dict(self, state: dict) -> None:
    best = state["best"]
    # Checkpoints of earlier versions wrote has_best=0 with a NaN best.
    self._best = (None if best is None or not int(state.get("has_best", 1))
                  else float(best))
    best_step = int(state["best_step"])
    self._best_step = None if best_step < 0 else best_step
    self._wait = int(state["wait"])
    stopped = int(state.get("stopped_step", -1))
    self.stopped_step = None if stopped < 0 else stopped
    self._timer.load_state_dict(state)
