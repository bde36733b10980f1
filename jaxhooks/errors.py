"""Exceptions raised by jaxhooks.

Configuration mistakes raise ``ValueError``, calls of the wrong shape raise
``TypeError``, and misuse of the training lifecycle raises a subclass of
``RuntimeError`` defined here. Every message names the argument in backticks
and shows the value received.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "CoordinationTimeoutError",
    "StallError",
    "LifecycleError",
    "StepMismatchError",
    "NanLossDuringTrainingError",
    "CheckpointError",
    "CheckpointMismatchError",
    "NonFiniteStateError",
]


class LifecycleError(RuntimeError):
  """A hooked step was used out of order: called before ``begin``, after
  stop, or after ``end``.

  Example:
    >>> import jax, jaxhooks as jh
    >>> step = jh.wrap(jax.jit(lambda s, b: (s, {})))
    >>> step({"step": 0}, None)
    Traceback (most recent call last):
    ...
    jaxhooks.errors.LifecycleError: The hooked step was called before `begin(state)`.
  """


class StepMismatchError(RuntimeError):
  """The step counted on the host differs from the step read on the device
  (the train step does not add exactly one to the step per call).

  Example:
    >>> import jax, jax.numpy as jnp, jaxhooks as jh
    >>> step = jh.wrap(jax.jit(lambda s, b: (s, {})))  # never adds 1
    >>> state = step.begin({"step": jnp.array(0)})
    >>> state, _, _ = step(state)
    >>> step.end(state)
    Traceback (most recent call last):
    ...
    jaxhooks.errors.StepMismatchError: The device step is 0 but 1 steps were counted on the host: `train_step` must add exactly 1 to the step of the state per call (or `step_fn` reads the wrong value).
  """


class NanLossDuringTrainingError(RuntimeError):
  """The loss was NaN or infinite.

  Attributes:
    step: the first global step whose loss was not finite.
    value: the loss value seen.

  Example:
    >>> import jaxhooks as jh
    >>> err = jh.NanLossDuringTrainingError(42, float("nan"))
    >>> err.step, str(err)
    (42, 'NaN loss during training: `loss` was nan at step 42.')
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

  Example:
    >>> import jaxhooks as jh
    >>> print(jh.CoordinationTimeoutError(200, 1, 60.0))
    Process 1 did not arrive at the check of step 200 within 60 s; stopping instead of hanging.
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


class StallError(RuntimeError):
  """A process of a multi-process job made no progress for too long (a
  peer stuck in its own data loading blocks the others in the step's
  collectives); the watchdog logs it and ends the process.

  Attributes:
    process: the process that made no progress.
    step: the last step it completed (``None`` when it had none yet).

  Example:
    >>> import jaxhooks as jh
    >>> print(jh.StallError(0, 12, 600.0, "stall_timeout_secs"))
    Process 0 made no progress for 600 s after step 12 (`stall_timeout_secs`=600); ending the process instead of hanging.
  """

  def __init__(self, process: int, step: Optional[int], waited_secs: float,
               setting: str, detail: str = ""):
    self.process = process
    self.step = step
    self.waited_secs = waited_secs
    self.setting = setting
    super().__init__(
        f"Process {process} made no progress for {waited_secs:g} s after "
        f"step {step} (`{setting}`={waited_secs:g}){detail}; ending the "
        "process instead of hanging.")

  def __reduce__(self):
    return (type(self), (self.process, self.step, self.waited_secs,
                         self.setting))


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or read: an unwritable or corrupted
  checkpoint directory, or a background write that failed.

  Example:
    >>> import os, tempfile, jaxhooks as jh
    >>> blocker = os.path.join(tempfile.mkdtemp(), "file")
    >>> open(blocker, "w").close()      # a file where a directory must be
    >>> hook = jh.CheckpointSaverHook(os.path.join(blocker, "ckpt"))
    >>> try:
    ...   hook.begin()                    # fails before any training
    ... except jh.CheckpointError as e:
    ...   print(str(e).replace(blocker, "<file>"))
    `checkpoint_dir` '<file>/ckpt' is not a writable directory: NotADirectoryError: [Errno 20] Not a directory: '<file>/ckpt'
  """


class CheckpointMismatchError(CheckpointError):
  """The checkpoint's train state does not have the structure (tree paths,
  shapes) of the state it is restored into.

  Example:
    >>> import tempfile, jax, jax.numpy as jnp, jaxhooks as jh
    >>> ckpt_dir = tempfile.mkdtemp()
    >>> train_step = jax.jit(lambda s, b: ({**s, "step": s["step"] + 1}, {}))
    >>> def train(state):
    ...   step = jh.wrap(train_step, [jh.StopAtStepHook(last_step=1),
    ...                               jh.CheckpointSaverHook(ckpt_dir)])
    ...   state = step.begin(state)       # restores the latest checkpoint
    ...   while not step.should_stop:
    ...     state, _, _ = step(state)
    ...   step.end(state)
    >>> train({"w": jnp.ones(2), "step": jnp.array(0)})   # saves step 1
    >>> try:
    ...   train({"w": jnp.ones(3), "step": jnp.array(0)})  # another shape
    ... except jh.CheckpointMismatchError as e:
    ...   print(str(e).split(": ", 1)[1])
    w: shape (3,) in the state, (2,) in the checkpoint.
  """


class NonFiniteStateError(CheckpointError):
  """A save was refused because the train state holds NaN or infinity.

  Attributes:
    step: the global step of the state.

  Example:
    >>> import jaxhooks as jh
    >>> err = jh.NonFiniteStateError(7, "runs/demo/ckpt")
    >>> err.step, isinstance(err, jh.CheckpointError)
    (7, True)
    >>> print(err)
    Refusing to save a non-finite train state (NaN or inf) at step 7 to `checkpoint_dir` 'runs/demo/ckpt'; the last saved checkpoint is kept.
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
