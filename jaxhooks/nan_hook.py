"""``NanTensorHook``: stop, or fail, when the loss is not finite."""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from jaxhooks.errors import NanLossDuringTrainingError
from jaxhooks.hook import Hook, RunArgs, RunContext, RunValues
from jaxhooks.timer import SecondOrStepTimer

__all__ = ["NanTensorHook"]

log = logging.getLogger("jaxhooks")


class NanTensorHook(Hook):
  """Checks that the loss is finite (neither NaN nor infinite).

  Args:
    loss_name: the name of the loss in the step's outputs.
    fail_on_nan_loss: raise ``NanLossDuringTrainingError`` (the default), or
      log a warning and request stop.
    every_n_iter: check on global steps that are multiples of this; 1 reads
      the loss after every step.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import jaxhooks as jh
    >>> step = jh.wrap(
    ...     jax.jit(lambda s, b: ({"step": s["step"] + 1},
    ...                           {"loss": jnp.log(2.0 - s["step"])})),
    ...     hooks=[jh.NanTensorHook("loss")])
    >>> state = step.begin({"step": jnp.array(0)})
    >>> for _ in range(4):
    ...   state, _, _ = step(state)
    Traceback (most recent call last):
    ...
    jaxhooks.errors.NanLossDuringTrainingError: NaN loss during training: `loss` was -inf at step 3.
  """

  def __init__(self, loss_name: str = "loss", fail_on_nan_loss: bool = True,
               *, every_n_iter: int = 1):
    if not isinstance(loss_name, str) or not loss_name:
      raise ValueError(
          f"`loss_name` must be the name of an output, got {loss_name!r}.")
    self._loss_name = loss_name
    self._fail = bool(fail_on_nan_loss)
    self._timer = SecondOrStepTimer(every_steps=every_n_iter,
                                    names=("every_n_secs", "every_n_iter"))
    self._trigger = False

  @property
  def loss_name(self) -> str:
    return self._loss_name

  def before_run(self, run_context: RunContext) -> Optional[RunArgs]:
    self._trigger = self._timer.should_trigger_for_step(run_context.step)
    return RunArgs(fetches=self._loss_name) if self._trigger else None

  def after_run(self, run_context: RunContext, run_values: RunValues) -> None:
    if not self._trigger:
      return
    self._timer.update_last_triggered_step(run_context.step)
    loss = run_values.results
    if np.all(np.isfinite(loss)):
      return
    value = loss.item() if np.ndim(loss) == 0 else loss
    if self._fail:
      raise NanLossDuringTrainingError(run_context.step, value,
                                       self._loss_name)
    log.warning("Model diverged with loss = %s at step %d; stopping.",
                value, run_context.step)
    run_context.request_stop()
