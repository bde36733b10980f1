"""Exceptions raised by jaxhooks.

Configuration mistakes raise ``ValueError``, calls of the wrong shape raise
``TypeError``, and misuse of the training lifecycle raises a subclass of
``RuntimeError`` defined here. Every message names the argument in backticks
and shows the value received.
"""

from __future__ import annotations

__all__ = [
    "CoordinationTimeoutError",
    "LifecycleError",
    "StepMismatchError",
    "NanLossDuringTrainingError",
]


class LifecycleError(RuntimeError):
  """A hooked step was used out of order: called before ``begin``, after
  stop, or after ``end``."""


class StepMismatchError(RuntimeError):
  """The step counted on the host differs from the step read on the device
  (the train step does not add exactly one to the step per call)."""


class NanLossDuringTrainingError(RuntimeError):
  """The loss was NaN or infinite.

  Attributes:
    step: the first global step whose loss was not finite.
    value: the loss value seen.
  """

  def __init__(self, step: int, value=None, name: str = "loss"):
    self.step = step
    self.value = value
    self.name = name
    super().__init__(
        f"NaN loss during training: `{name}` was {value!r} at step {step}.")

  def __reduce__(self):
    return (type(self), (self.step, self.value, self.name))


class CoordinationTimeoutError(RuntimeError):
  """A process did not arrive at an agreed check step in time (it died, hung,
  or runs a different loop).

  Attributes:
    step: the check step.
    process: the index of the process that did not arrive.
  """

  def __init__(self, step: int, process: int, timeout_secs: float,
               detail: str = ""):
    self.step = step
    self.process = process
    self.timeout_secs = timeout_secs
    super().__init__(
        f"Process {process} did not arrive at the check of step {step} "
        f"within {timeout_secs:g} s{detail}; stopping instead of hanging.")

  def __reduce__(self):
    return (type(self), (self.step, self.process, self.timeout_secs))
