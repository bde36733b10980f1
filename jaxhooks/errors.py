"""Exceptions raised by jaxhooks.

Configuration mistakes raise ``ValueError``, calls of the wrong shape raise
``TypeError``, and misuse of the training lifecycle raises a subclass of
``RuntimeError`` defined here. Every message names the argument in backticks
and shows the value received.
"""

from __future__ import annotations

__all__ = [
    "LifecycleError",
    "StepMismatchError",
    "NanLossDuringTrainingError",
    "CheckpointError",
    "CheckpointMismatchError",
    "NonFiniteStateError",
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


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or read: an unwritable or corrupted
  checkpoint directory, or a background write that failed."""


class CheckpointMismatchError(CheckpointError):
  """The checkpoint's train state does not have the structure (tree paths,
  shapes) of the state it is restored into."""


class NonFiniteStateError(CheckpointError):
  """A save was refused because the train state holds NaN or infinity.

  Attributes:
    step: the global step of the state.
  """

  def __init__(self, step: int, checkpoint_dir: str = ""):
    self.step = step
    self.checkpoint_dir = checkpoint_dir
    super().__init__(
        f"Refusing to save a non-finite train state (NaN or inf) at step "
        f"{step} to `checkpoint_dir` {checkpoint_dir!r}; the last saved "
        "checkpoint is kept.")

  def __reduce__(self):
    return (type(self), (self.step, self.checkpoint_dir))
