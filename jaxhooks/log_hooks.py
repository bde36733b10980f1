"""Hooks that report on training: ``LoggingTensorHook`` and
``StepCounterHook``. Both write on the primary process only and read the
device only on the steps they report."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Callable, Dict, Optional

from jaxhooks import fetch, scalars
from jaxhooks.hook import (GLOBAL_STEP, Hook, RunArgs, RunContext, RunValues,
                           Session)
from jaxhooks.timer import Clock, SecondOrStepTimer, TimerTriggered
from jaxhooks.writers import MetricWriter, default_writer, open_writer

__all__ = ["LoggingTensorHook", "StepCounterHook"]

log = logging.getLogger("jaxhooks")


def _tagged(tensors: Any) -> Dict[str, Any]:
  """``tensors`` as ``{tag: fetch}``: names tag themselves."""
  if isinstance(tensors, Mapping):
    items = dict(tensors)
  elif isinstance(tensors, str):
    items = {tensors: tensors}
  else:
    try:
      items = {t if isinstance(t, str) else getattr(t, "__name__", repr(t)): t
               for t in tensors}
    except TypeError:
      raise TypeError(
          "`tensors` must be a list of output names or a dict of "
          f"tag -> name, got {tensors!r}.") from None
  for tag, t in items.items():
    if not (isinstance(t, str) or t is GLOBAL_STEP or callable(t)):
      raise TypeError(
          f"`tensors[{tag!r}]` must be an output name, jaxhooks.GLOBAL_STEP "
          f"or a function of (state, outputs), got {t!r}.")
  if not items:
    raise ValueError(f"`tensors` must name at least one value, got {tensors!r}.")
  return items


class LoggingTensorHook(TimerTriggered, Hook):
  """Logs chosen outputs every N steps, every N seconds, and/or at the end.

  Lines go to the ``"jaxhooks"`` logger at INFO level, as TensorFlow writes
  them: ``loss = 0.25, accuracy = 0.9 (1.234 sec)``.

  Args:
    tensors: a list of output names (or functions of ``(state, outputs)``),
      or a dict ``{tag: name_or_function}``.
    every_n_iter: log on global steps that are multiples of this.
    every_n_secs: log when this many seconds have passed.
    at_end: also log the values of the final state and outputs in ``end``.
    formatter: a function of ``{tag: value}`` returning the line.
    clock: time source for ``every_n_secs`` (tests inject one).

  Exactly one of ``every_n_iter`` and ``every_n_secs`` must be given unless
  ``at_end`` is true, in which case both may be ``None``.

  Example:
    >>> import logging, jax, jax.numpy as jnp
    >>> import jaxhooks as jh
    >>> step = jh.wrap(
    ...     jax.jit(lambda s, b: ({"step": s["step"] + 1},
    ...                           {"loss": 1.0 / (s["step"] + 1)})),
    ...     hooks=[jh.StopAtStepHook(last_step=4),
    ...            jh.LoggingTensorHook(["loss"], every_n_iter=2,
    ...                                 formatter=lambda v: f"loss={v['loss']:.2f}")])
    >>> state = step.begin({"step": jnp.array(0)})
    >>> logging.basicConfig(level=logging.INFO, format="%(message)s",
    ...                     stream=__import__("sys").stdout, force=True)
    >>> for _ in range(4):
    ...   state, _, _ = step(state)
    loss=0.50
    loss=0.25
  """

  primary_only = True
  accepts_lagged_fetches = True

  def __init__(self, tensors: Any, every_n_iter: Optional[int] = None,
               every_n_secs: Optional[float] = None, at_end: bool = False,
               formatter: Optional[Callable[[Dict[str, Any]], str]] = None,
               *, clock: Optional[Clock] = None):
    self._tensors = _tagged(tensors)
    self._timer = None
    if not (at_end and every_n_iter is None and every_n_secs is None):
      self._timer = SecondOrStepTimer(every_secs=every_n_secs,
                                      every_steps=every_n_iter, clock=clock,
                                      names=("every_n_secs", "every_n_iter"))
    if formatter is not None and not callable(formatter):
      raise ValueError(f"`formatter` must be callable, got {formatter!r}.")
    self._at_end = bool(at_end)
    self._formatter = formatter

  @property
  def timer(self) -> Optional[SecondOrStepTimer]:
    return self._timer

  def output_names(self) -> Dict[str, Any]:
    return {"tensors": scalars.named_outputs(self._tensors)}

  def _log(self, values: Dict[str, Any], elapsed: Optional[float]) -> None:
    values = scalars.outputs_of(  # the user's order; one number each
        {tag: values[tag] for tag in self._tensors},
        "LoggingTensorHook `tensors`")
    if self._formatter is not None:
      log.info("%s", self._formatter(values))
      return
    line = ", ".join(f"{tag} = {value}" for tag, value in values.items())
    if elapsed is not None:
      line += f" ({elapsed:.3f} sec)"
    log.info("%s", line)

  def before_run(self, run_context: RunContext) -> Optional[RunArgs]:
    if self._timer is not None and self._timer.claim(run_context.step):
      return RunArgs(fetches=self._tensors)
    return None

  def after_run(self, run_context: RunContext, run_values: RunValues) -> None:
    if run_values.results is not None and self._timer is not None:
      elapsed, _ = self._timer.update_last_triggered_step(run_values.step)
      self._log(run_values.results, elapsed)

  def end(self, session: Session) -> None:
    if self._at_end and session.outputs is not None:
      values = fetch.resolve_at_step(self._tensors, session.state,
                                     session.outputs, session.step)
      self._log(values, None)

  def state_dict(self) -> Optional[dict]:
    return None if self._timer is None else self._timer.state_dict()

  def load_state_dict(self, state: dict) -> None:
    if self._timer is not None:
      self._timer.load_state_dict(state)


class StepCounterHook(TimerTriggered, Hook):
  """Logs (and writes) the training speed in global steps per second.

  On each report step it reads the device step, so the rate counts finished
  steps, not merely dispatched ones; on other steps it touches nothing.

  Args:
    every_n_steps: report on global steps that are multiples of this.
    every_n_secs: report when this many seconds have passed instead.
    output_dir: write ``global_step/sec`` to TensorBoard event files there
      (the hook opens :func:`~jaxhooks.default_writer` in ``begin`` and
      closes it in ``end``).
    summary_writer: TF's name for ``writer``.
    writer: a :class:`~jaxhooks.MetricWriter` that gets ``global_step/sec``
      as TF's ``StepCounterHook`` writes it (flushed in ``end``, not
      closed: share the one of a ``SummarySaverHook``).
    clock: time source (tests inject one).

  At most one of ``output_dir`` and ``writer`` may be given; with neither,
  the rate is only logged.

  Example:
    >>> import logging, os, tempfile, jax, jax.numpy as jnp
    >>> import jaxhooks as jh
    >>> hook = jh.StepCounterHook(every_n_steps=100)
    >>> hook.timer.every_steps
    100
    >>> logdir = tempfile.mkdtemp()
    >>> step = jh.wrap(jax.jit(lambda s, b: ({"step": s["step"] + 1}, {})),
    ...                hooks=[jh.StopAtStepHook(last_step=4),
    ...                       jh.StepCounterHook(every_n_steps=2,
    ...                                          output_dir=logdir)])
    >>> state = step.begin({"step": jnp.array(0)})
    >>> logging.basicConfig(level=logging.INFO, format="%(message)s",
    ...                     stream=__import__("sys").stdout, force=True)
    >>> for _ in range(4):  # doctest: +ELLIPSIS
    ...   state, _, _ = step(state)
    global_step/sec: ...
    global_step/sec: ...
    >>> state = step.end(state)   # and the two rates are in logdir
    >>> [name.startswith("events.out.tfevents") for name in os.listdir(logdir)]
    [True]
  """

  primary_only = True
  accepts_lagged_fetches = True
  _timer: SecondOrStepTimer   # always set: one of the periods is given

  def __init__(self, every_n_steps: Optional[int] = 100,
               every_n_secs: Optional[float] = None, output_dir=None,
               summary_writer=None, *, writer=None,
               clock: Optional[Clock] = None):
    if every_n_secs is not None and every_n_steps == 100:
      every_n_steps = None  # TF: giving every_n_secs replaces the default
    writer = writer if writer is not None else summary_writer
    if output_dir is not None and writer is not None:
      raise ValueError(
          "At most one of `output_dir` and `writer` may be given, got "
          f"output_dir={output_dir!r}, writer={writer!r}.")
    if writer is not None and not isinstance(writer, MetricWriter):
      raise TypeError(
          f"`writer` must have write_scalars, flush and close, got {writer!r}.")
    if output_dir is not None and not isinstance(output_dir, (str,
                                                              os.PathLike)):
      raise TypeError(f"`output_dir` must be a path, got {output_dir!r}.")
    self._owns_writer = output_dir is not None
    self._timer = SecondOrStepTimer(every_secs=every_n_secs,
                                    every_steps=every_n_steps, clock=clock,
                                    names=("every_n_secs", "every_n_steps"))
    self._output_dir = output_dir
    self._writer = writer
    self._started = False
    self.last_rate: Optional[float] = None

  def begin(self) -> None:
    if self._owns_writer:
      if self._writer is None:
        assert self._output_dir is not None, "set when the hook owns it"
        self._writer = default_writer(self._output_dir)
      open_writer(self._writer, self._output_dir)  # unwritable: fails here

  @property
  def timer(self) -> SecondOrStepTimer:
    return self._timer

  def before_run(self, run_context: RunContext) -> Optional[RunArgs]:
    timer = self._timer
    if (timer.last_triggered_step() is None and not self._started
        or timer.claim(run_context.step)):
      self._started = True
      return RunArgs(fetches=GLOBAL_STEP)
    return None

  def after_run(self, run_context: RunContext, run_values: RunValues) -> None:
    if run_values.results is None:
      return
    secs, steps = self._timer.update_last_triggered_step(run_values.step)
    if secs is None or steps is None or secs <= 0 or steps <= 0:
      return
    rate = steps / secs
    self.last_rate = rate
    log.info("global_step/sec: %g", rate)
    if self._writer is not None:
      self._writer.write_scalars(run_context.step, {"global_step/sec": rate})

  def after_create_session(self, session: Session, coord: Any) -> None:
    self._started = False

  def end(self, session: Session) -> None:
    if self._owns_writer and self._writer is not None:
      self._writer.close()
      return
    flush = getattr(self._writer, "flush", None)
    if callable(flush):
      flush()

  def on_exception(self, session: Session, exc: BaseException) -> None:
    if self._owns_writer and self._writer is not None:
      self._writer.close()
