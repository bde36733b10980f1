"""``ProgressBarHook``: a progress bar (or plain log lines) for training."""

from __future__ import annotations

import datetime
import sys
from typing import Any, Dict, Optional, TextIO

from jaxhooks import fetch, scalars
from jaxhooks.hook import (GLOBAL_STEP, Hook, RunArgs, RunContext, RunValues,
                           Session)
from jaxhooks.log_hooks import _tagged
from jaxhooks.stop_hooks import StopAtStepHook
from jaxhooks.timer import Clock, SecondOrStepTimer

__all__ = ["ProgressBarHook"]

_STEP = "__jaxhooks_step__"
_WHO = "ProgressBarHook `metrics`"


def _tqdm(required: bool) -> Any:
  """``tqdm.auto.tqdm``, or ``None`` when tqdm is missing and not required."""
  try:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    if required:
      raise ImportError("ProgressBarHook's bar needs tqdm: "
                        "`pip install jaxhooks[progress]`.") from e
    return None
  return tqdm


def _in_notebook(tqdm: Any) -> bool:
  """True when ``tqdm.auto`` picked the Jupyter/Colab widget."""
  return any(c.__module__ == "tqdm.notebook" for c in tqdm.__mro__)


def _fmt_secs(secs: float) -> str:
  return str(datetime.timedelta(seconds=int(round(secs))))


def _fmt_metrics(values: Dict[str, Any]) -> str:
  return ", ".join(f"{tag}={float(v):.4g}" for tag, v in values.items())


class ProgressBarHook(Hook):
  """Shows training progress: steps, steps/sec, ETA and chosen metrics.

  In a terminal or a Jupyter/Colab notebook it draws a ``tqdm.auto`` bar
  (``pip install jaxhooks[progress]``). When the stream is not a terminal (a
  log file, a batch job's output) it writes a plain line every
  ``every_n_secs`` instead of redrawing the bar with carriage returns::

    train: step 300/1000 (30%) | 12.5 steps/s | ETA 0:00:56 | loss=0.1234

  and a last line in ``end``; the first line has no rate (its steps include
  compilation). Steps are counted on the host; the device is read only on
  refresh steps (the step and the chosen metrics, in the one
  ``jax.device_get`` of that step), so the rate counts finished steps.

  Args:
    total: the global step training ends at; by default the target of a
      :class:`~jaxhooks.StopAtStepHook` in the same hook list. Without
      either, no ETA is shown.
    metrics: output names or functions of ``(state, outputs)`` to show, or a
      dict ``{tag: name_or_function}``.
    every_n_iter: refresh (read metrics; write a plain line) on global steps
      that are multiples of this.
    every_n_secs: refresh when this many seconds have passed instead; the
      default is 1 s for a bar and 30 s for plain lines.
    desc: the label in front of the bar or line.
    stream: where to write (``sys.stderr`` by default).
    plain: ``True`` for plain lines, ``False`` for a bar, ``None`` to choose
      (a bar in a notebook or when ``stream.isatty()``, if tqdm is
      installed).
    clock: time source for rates and refreshes (tests inject one).

  Example:
    >>> import io, jax, jax.numpy as jnp
    >>> import jaxhooks as jh
    >>> out, t = io.StringIO(), [0.0]
    >>> def tick(ctx):  # the clock moves 0.5 s per step
    ...   t[0] += 0.5
    >>> step = jh.wrap(
    ...     jax.jit(lambda s, b: ({"step": s["step"] + 1},
    ...                           {"loss": 1.0 / (s["step"] + 1)})),
    ...     hooks=[jh.StopAtStepHook(last_step=40), jh.LambdaHook(before_run=tick),
    ...            jh.ProgressBarHook(metrics=["loss"], every_n_secs=10,
    ...                               stream=out, clock=lambda: t[0])])
    >>> state = step.begin({"step": jnp.array(0)})
    >>> while not step.should_stop:
    ...   state, _, _ = step(state)
    >>> state = step.end(state)
    >>> print(out.getvalue(), end="")
    train: step 1/40 (2%) | loss=1
    train: step 21/40 (52%) | 2 steps/s | ETA 0:00:10 | loss=0.04762
    train: step 40/40 (100%) | 2 steps/s | done in 0:00:20 | loss=0.025
  """

  primary_only = True

  def __init__(self, total: Optional[int] = None, *, metrics: Any = (),
               every_n_iter: Optional[int] = None,
               every_n_secs: Optional[float] = None, desc: str = "train",
               stream: Optional[TextIO] = None, plain: Optional[bool] = None,
               clock: Optional[Clock] = None):
    if total is not None:
      if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise ValueError(f"`total` must be a step >= 0, got {total!r}.")
    self._total_arg = total
    self._metrics = _tagged(metrics) if metrics else None
    if every_n_iter is not None or every_n_secs is not None:
      SecondOrStepTimer(every_n_secs, every_n_iter,
                        names=("every_n_secs", "every_n_iter"))  # validates
    self._every = (every_n_secs, every_n_iter)
    if stream is not None and not hasattr(stream, "write"):
      raise TypeError(f"`stream` must have a `write` method, got {stream!r}.")
    self._stream_arg = stream
    self._plain_arg = plain
    self._desc = str(desc)
    self._clock_arg = clock
    self._stop_hook: Optional[StopAtStepHook] = None
    self._reset()

  def _reset(self) -> None:
    self._bar = None
    self._tqdm: Any = None
    self._timer: Optional[SecondOrStepTimer] = None
    self._stream = self._stream_arg
    self._plain = self._plain_arg
    self._started = False
    self._trigger = False
    self._total: Optional[int] = None
    self._start = (0, 0.0)       # (step, time) when training started
    self._last = (0, 0.0)        # (step, time) of the last refresh
    self._postfix: Dict[str, Any] = {}

  @property
  def plain(self) -> Optional[bool]:
    """Whether plain lines are written (known after ``begin``)."""
    return self._plain

  @property
  def timer(self) -> Optional[SecondOrStepTimer]:
    return self._timer

  def timers(self) -> tuple:
    return () if self._timer is None else (self._timer,)

  def _begun_timer(self) -> SecondOrStepTimer:
    assert self._timer is not None, "made by begin"
    return self._timer

  # -- lifecycle --------------------------------------------------------------

  def begin(self) -> None:
    self._reset()
    if self._stream is None:
      self._stream = sys.stderr
    tqdm = None if self._plain else _tqdm(required=self._plain is False)
    if self._plain is None:
      isatty = getattr(self._stream, "isatty", None)
      self._plain = tqdm is None or not (
          _in_notebook(tqdm) or (isatty is not None and isatty()))
    self._tqdm = None if self._plain else tqdm
    secs, steps = self._every
    if secs is None and steps is None:
      secs = 30.0 if self._plain else 1.0
    self._timer = SecondOrStepTimer(secs, steps, clock=self._clock_arg,
                                    names=("every_n_secs", "every_n_iter"))

  def restore(self, state: Any, hooks: tuple) -> None:
    # The hook list is known here: remember the StopAtStepHook for the ETA.
    stops = [h for h in hooks if isinstance(h, StopAtStepHook)]
    self._stop_hook = stops[0] if stops else None
    return None

  def after_create_session(self, session: Session, coord: Any) -> None:
    now = self._begun_timer().clock()
    self._start = self._last = (session.step, now)

  def _open(self) -> None:
    """Opens the bar at the first step (every hook's target is known)."""
    self._started = True
    self._total = self._total_arg
    if self._total is None and self._stop_hook is not None:
      self._total = self._stop_hook.last_step
    if self._tqdm is not None:
      self._bar = self._tqdm(total=self._total, initial=self._start[0],
                             desc=self._desc, unit="step", file=self._stream,
                             dynamic_ncols=True)

  def output_names(self) -> Dict[str, Any]:
    if self._metrics is None:
      return {}
    return {"metrics": scalars.named_outputs(self._metrics)}

  def next_step_of_interest(self, step: int):
    every = self._every[1]   # from the arguments alone: the same everywhere
    return None if every is None else (step // every + 1) * every

  def due(self) -> bool:
    return (self._bar is not None or not self._started
            or self._begun_timer().due())

  def before_run(self, run_context: RunContext) -> Optional[RunArgs]:
    if not self._started:
      self._open()
    self._trigger = self._begun_timer().should_trigger_for_step(
        run_context.step)
    if not self._trigger:
      return None
    fetches = {_STEP: GLOBAL_STEP}
    if self._metrics is not None:
      fetches.update(self._metrics)
    return RunArgs(fetches=fetches)

  def after_run(self, run_context: RunContext, run_values: RunValues) -> None:
    step = run_context.step
    if self._bar is not None:
      self._bar.update(step - self._bar.n)
    if not self._trigger:
      return
    timer = self._begun_timer()
    timer.update_last_triggered_step(step)
    values = dict(run_values.results)
    del values[_STEP]
    values = scalars.outputs_of(values, _WHO)
    self._postfix = values
    now = timer.clock()
    if self._bar is not None:
      if values:
        self._bar.set_postfix_str(_fmt_metrics(values), refresh=False)
    elif not (self._total is not None and step >= self._total):
      self._line(step, self._last, now, final=False)  # the last one: in end
    self._last = (step, now)

  def end(self, session: Session) -> None:
    if not self._started:
      self._open()
    if self._metrics is not None and session.outputs is not None:
      self._postfix = scalars.outputs_of(fetch.resolve_at_step(
          self._metrics, session.state, session.outputs, session.step), _WHO)
    if self._bar is not None:
      if self._postfix:
        self._bar.set_postfix_str(_fmt_metrics(self._postfix), refresh=False)
      self._bar.update(session.step - self._bar.n)
      self._bar.close()
      self._bar = None
    else:
      self._line(session.step, self._start, self._begun_timer().clock(),
                 final=True)

  def on_exception(self, session: Session, exc: BaseException) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None

  # -- plain lines --------------------------------------------------------------

  def _line(self, step: int, since: tuple, now: float, *, final: bool) -> None:
    """Writes ``desc: step N/T (P%) | R steps/s | ETA … | metrics``."""
    parts = [f"{self._desc}: step {step}"]
    total = self._total
    if total:
      parts[0] += f"/{total} ({100 * step // total}%)"
    steps, secs = step - since[0], now - since[1]
    rate = steps / secs if steps > 0 and secs > 0 else None
    if not final and since is self._start:
      rate = None  # the first steps include compilation: no rate, no ETA
    if rate is not None:
      parts.append((f"{rate:.0f}" if rate >= 100 else f"{rate:.3g}")
                   + " steps/s")
    if final:
      parts.append(f"done in {_fmt_secs(now - self._start[1])}")
    elif total and rate is not None and total > step:
      parts.append(f"ETA {_fmt_secs((total - step) / rate)}")
    if self._postfix:
      parts.append(_fmt_metrics(self._postfix))
    stream = self._stream
    assert stream is not None, "set by begin"
    stream.write(" | ".join(parts) + "\n")
    flush = getattr(stream, "flush", None)
    if callable(flush):
      flush()
