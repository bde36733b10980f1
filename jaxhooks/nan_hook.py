"""``NanTensorHook``: stop, or fail, when the loss is not finite.

The check costs no host-device sync of its own. The hook keeps a sentinel on
the device (a :class:`~jaxhooks.DeviceMonitor`) that the step's own program
updates after every step::

  [first_bad, value] = [step, loss]   if first_bad < 0 and loss is NaN/inf

The runner reads the sentinel whenever it reads the device anyway (a step
on which some hook fetches something, and ``end``), so the error names the
exact first bad step even when it is noticed later; ``every_n_iter`` bounds
how late.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxhooks import fetch
from jaxhooks.errors import NanLossDuringTrainingError
from jaxhooks.hook import (GLOBAL_STEP, DeviceMonitor, Hook, RunArgs,
                           RunContext, RunValues)
from jaxhooks.timer import SecondOrStepTimer, TimerTriggered

__all__ = ["NanTensorHook"]

log = logging.getLogger("jaxhooks")


class NanTensorHook(TimerTriggered, Hook):
  """Checks that the loss is finite (neither NaN nor infinite).

  Args:
    loss_name: the name of the loss in the step's outputs.
    fail_on_nan_loss: raise ``NanLossDuringTrainingError`` (the default), or
      log a warning and request stop: the session then ends cleanly, and
      ``CheckpointSaverHook`` saves no non-finite state (it logs an error
      and keeps the last good checkpoint) and raises nothing.
    every_n_iter: also read the device on global steps that are multiples
      of this (100 by default), so a bad loss is noticed at most this many
      steps late; the sentinel is also read with the other hooks' fetches
      and in ``end``. ``None`` adds no read of its own; 1 reads after every
      step.

  The error always names the first step whose loss was not finite, and no
  ``after_run`` of the step on which it is noticed runs (so no checkpoint of
  that step is written).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import jaxhooks as jh
    >>> step = jh.wrap(
    ...     jax.jit(lambda s, b: ({"step": s["step"] + 1},
    ...                           {"loss": jnp.log(2.0 - s["step"])})),
    ...     hooks=[jh.NanTensorHook("loss", every_n_iter=5)])
    >>> state = step.begin({"step": jnp.array(0)})
    >>> for _ in range(5):
    ...   state, _, _ = step(state)
    Traceback (most recent call last):
    ...
    jaxhooks.errors.NanLossDuringTrainingError: NaN loss during training: `loss` was -inf at step 3.
  """

  def __init__(self, loss_name: str = "loss", fail_on_nan_loss: bool = True,
               *, every_n_iter: Optional[int] = 100):
    if not isinstance(loss_name, str) or not loss_name:
      raise ValueError(
          f"`loss_name` must be the name of an output, got {loss_name!r}.")
    self._loss_name = loss_name
    self._fail = bool(fail_on_nan_loss)
    self._timer = None
    if every_n_iter is not None:
      self._timer = SecondOrStepTimer(every_steps=every_n_iter,
                                      names=("every_n_secs", "every_n_iter"))
    self._reported = False

  @property
  def loss_name(self) -> str:
    return self._loss_name

  def begin(self) -> None:
    self._reported = False

  def device_monitors(self) -> Tuple[DeviceMonitor, ...]:
    return (DeviceMonitor(init=_init, update=self._update,
                          on_read=self._on_read),)

  def before_run(self, run_context: RunContext) -> Optional[RunArgs]:
    if self._timer is not None and self._timer.should_trigger_for_step(
        run_context.step):
      return RunArgs(fetches=GLOBAL_STEP)   # a read; the sentinel rides along
    return None

  def after_run(self, run_context: RunContext, run_values: RunValues) -> None:
    if run_values.results is not None and self._timer is not None:
      self._timer.update_last_triggered_step(run_context.step)

  def _update(self, sentinel: Any, step: Any, state: Any,
              outputs: Any) -> Any:
    del state
    loss = jnp.asarray(fetch.output(outputs, self._loss_name))
    finite = jnp.isfinite(loss)
    new = (sentinel[0] < 0) & ~jnp.all(finite)
    # A NaN anywhere shows as NaN; else the infinite entry (+inf or -inf).
    bad = jnp.sum(jnp.where(finite, 0, loss)).astype(jnp.float32)
    found = jnp.stack([jnp.asarray(step, jnp.int32),
                       jax.lax.bitcast_convert_type(bad, jnp.int32)])
    return jnp.where(new, found, sentinel)

  def _on_read(self, sentinel: Any, step: int) -> Optional[bool]:
    first = int(sentinel[0])
    value = float(np.asarray(sentinel[1], np.int32).view(np.float32))
    if first < 0 or self._reported:
      return None
    self._reported = True
    if self._fail:
      raise NanLossDuringTrainingError(first, value, self._loss_name)
    late = "" if step == first else f" (noticed at step {step})"
    log.warning("Model diverged with loss = %s at step %d%s; stopping.",
                value, first, late)
    return True


def _init() -> Any:
  # [first bad step, its loss as float32 bits]: one array, as every input
  # and output of the step's program costs a little at each dispatch.
  return jnp.array([-1, 0], jnp.int32)
