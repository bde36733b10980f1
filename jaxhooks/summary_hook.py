"""``SummarySaverHook``: scalar summaries for TensorBoard every N steps."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, List, Optional

import numpy as np

from jaxhooks import scalars
from jaxhooks.hook import Hook, RunArgs, RunContext, RunValues, Session
from jaxhooks.log_hooks import _tagged
from jaxhooks.timer import Clock, SecondOrStepTimer, TimerTriggered
from jaxhooks.writers import (MetricWriter, default_writer, open_writer,
                              scalar_dict)

__all__ = ["SummarySaverHook"]

log = logging.getLogger("jaxhooks")
_WHO = "SummarySaverHook `scalars`"


def _is_number(value: Any) -> bool:
  """True for a numeric array or a Python number (no device sync)."""
  dtype = getattr(value, "dtype", None)
  if dtype is None:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  return np.issubdtype(dtype, np.number)


def scalar_outputs(state: Any, outputs: Any) -> Any:
  """The numeric entries of the step's ``outputs`` dict (a fetch function);
  one of many elements is summarized on the device (first element, all
  equal), so that a replicated one is written and no array is read."""
  del state
  if outputs is None:
    return {}
  if not isinstance(outputs, Mapping):
    raise TypeError(
        "SummarySaverHook with `scalars=None` writes the step's named scalar "
        f"outputs, but `outputs` is a {type(outputs).__name__}; pass "
        "`scalars=` to choose what to write.")
  found = {}
  for tag, value in outputs.items():
    if isinstance(value, Mapping):
      value = scalar_outputs(None, value)
      if value:
        found[tag] = value
    elif _is_number(value):
      found[tag] = scalars.summarize(value)
  return found


def _reported(values: Mapping, prefix: str, skipped: List[str]) -> dict:
  """``values`` without the entries the rule reports no number for (their
  tags go to ``skipped``)."""
  out = {}
  for tag, value in values.items():
    name = f"{prefix}/{tag}" if prefix else str(tag)
    if isinstance(value, Mapping):
      value = _reported(value, name, skipped)
      if value:
        out[tag] = value
    elif scalars.reportable(value) is None:
      skipped.append(name)
    else:
      out[tag] = value
  return out


class SummarySaverHook(TimerTriggered, Hook):
  """Writes scalar summaries every N steps or seconds, as TF's hook does.

  The values are read from the device on trigger steps only, together with
  every other hook's fetches of that step (one ``jax.device_get``).

  Args:
    save_steps: write on global steps that are multiples of this.
    save_secs: write when this many seconds have passed instead.
    output_dir: where to write TensorBoard event files (a
      :class:`~jaxhooks.TensorBoardWriter` is made for it).
    writer: a :class:`~jaxhooks.MetricWriter` to use instead of
      ``output_dir`` (TF's ``summary_writer``).
    scalars: what to write: a list of output names or functions of
      ``(state, outputs)``, or a dict ``{tag: name_or_function}``; a function
      may return a dict, whose keys extend its tag (``tag/key``). ``None``
      (the default) writes every numeric entry of the step's outputs dict
      that reports a number: a scalar, or a replicated value (every element
      equal: a ``pmap`` output reduced with ``lax.pmean``), written as its
      first element. The others are not written, and a warning names them
      once. Values chosen with ``scalars`` follow the same rule, and one
      whose elements differ is an error (at the first call for an output
      name).
    clock: time source for ``save_secs`` (tests inject one).

  Exactly one of ``save_steps`` and ``save_secs``, and exactly one of
  ``output_dir`` and ``writer``, must be given. The hook flushes the writer
  in ``end`` and closes it if it made it.

  Example:
    >>> import tempfile, jax, jax.numpy as jnp
    >>> import jaxhooks as jh
    >>> logdir = tempfile.mkdtemp()
    >>> step = jh.wrap(
    ...     jax.jit(lambda s, b: ({"step": s["step"] + 1},
    ...                           {"loss": 1.0 / (s["step"] + 1)})),
    ...     hooks=[jh.StopAtStepHook(last_step=4),
    ...            jh.SummarySaverHook(save_steps=2, output_dir=logdir)])
    >>> state = step.begin({"step": jnp.array(0)})
    >>> for _ in range(4):
    ...   state, _, _ = step(state)
    >>> state = step.end(state)   # event file with loss at steps 2 and 4
  """

  primary_only = True
  accepts_lagged_fetches = True
  _timer: SecondOrStepTimer   # always set: one of the periods is given

  def __init__(self, save_steps: Optional[int] = None,
               save_secs: Optional[float] = None,
               output_dir: Optional[str] = None,
               writer: Optional[MetricWriter] = None,
               scalars: Any = None, *, clock: Optional[Clock] = None,
               summary_writer: Optional[MetricWriter] = None):
    writer = writer if writer is not None else summary_writer
    if (output_dir is None) == (writer is None):
      raise ValueError(
          "Exactly one of `output_dir` and `writer` must be given, got "
          f"output_dir={output_dir!r}, writer={writer!r}.")
    if writer is not None and not isinstance(writer, MetricWriter):
      raise TypeError(
          "`writer` must have write_scalars, flush and close, got "
          f"{writer!r}.")
    self._timer = SecondOrStepTimer(every_secs=save_secs,
                                    every_steps=save_steps, clock=clock,
                                    names=("save_secs", "save_steps"))
    self._fetches = scalar_outputs if scalars is None else _tagged(scalars)
    self._owns_writer = writer is None
    if writer is None:
      assert output_dir is not None, "exactly one of the two is given"
      writer = default_writer(output_dir)
    self._writer = writer
    self._output_dir = output_dir
    self._skipped: set = set()

  def output_names(self) -> dict:
    if self._fetches is scalar_outputs:
      return {}
    return {"scalars": scalars.named_outputs(self._fetches)}

  @property
  def writer(self) -> MetricWriter:
    """The writer summaries go to (share it with ``StepCounterHook``)."""
    return self._writer

  @property
  def timer(self) -> SecondOrStepTimer:
    return self._timer

  def begin(self) -> None:
    open_writer(self._writer, self._output_dir)  # unwritable: fails here

  def before_run(self, run_context: RunContext) -> Optional[RunArgs]:
    if self._timer.claim(run_context.step):
      return RunArgs(fetches=self._fetches)
    return None

  def after_run(self, run_context: RunContext, run_values: RunValues) -> None:
    if run_values.results is None:
      return
    self._timer.update_last_triggered_step(run_values.step)
    results = run_values.results
    if self._fetches is scalar_outputs:
      skipped: List[str] = []
      results = _reported(results, "", skipped)
      new = sorted(set(skipped) - self._skipped)
      if new:
        self._skipped.update(new)
        log.warning("SummarySaverHook (scalars=None) does not write the "
                    "outputs %s: their elements differ (not a scalar nor a "
                    "replicated value). Reduce them in the step, or choose "
                    "what to write with `scalars=`.", new)
    values = scalar_dict(results, who=_WHO)
    if values:
      self._writer.write_scalars(run_context.step, values)

  def end(self, session: Session) -> None:
    if self._owns_writer:
      self._writer.close()
    else:
      self._writer.flush()

  def on_exception(self, session: Session, exc: BaseException) -> None:
    self.end(session)

  def state_dict(self) -> Optional[dict]:
    return self._timer.state_dict()

  def load_state_dict(self, state: dict) -> None:
    self._timer.load_state_dict(state)
