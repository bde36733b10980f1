"""The hook interface: ``SessionRunHook`` and the values handed to it.

A hook observes and steers a training loop built on a jitted
``train_step(state, batch) -> (state, outputs)``. The loop that
:func:`jaxhooks.wrap` builds calls the hooks in this order::

  call hooks.begin()
  state = restore(state)                      # latest checkpoint, if any
  call hooks.after_create_session(session, coord)
  while not stop:
    for hook in hooks: args.append(hook.before_run(run_context))
    state, outputs = train_step(state, batch)   # async dispatch, no sync
    values = jax.device_get(every fetch of every hook)   # only if any
    for hook in hooks: hook.after_run(run_context, run_values)
  call hooks.end(session)

Every ``after_run`` runs even when an earlier hook requested stop. When the
data ends (``StopIteration``) ``after_run`` is skipped for that step and
``end`` still runs. An exception raised by the train step itself (or the
batch it was given) fails that call only: no ``after_run`` runs, the state
stays the input of the call, and the caller may catch the error and go on,
as in TensorFlow (in one process, while the input state was not donated).
Any other exception (a hook's, ``KeyboardInterrupt``, an error the user's
loop lets escape) ends the session: ``end`` is skipped (as TensorFlow does)
and every hook's ``on_exception`` runs instead, so that nothing is lost; a
session still open when the interpreter exits is ended that way too. Every
hook's ``end`` (or ``on_exception``) runs even when another one raised; the
first error is raised, with the others attached as notes.

Steps are global steps: ``run_context.step`` is the number of completed
updates the state will hold once this call finishes, so a hook that acts
"every 100 steps" acts when ``run_context.step % 100 == 0``. A call may run
several steps (``wrap(..., steps_per_call=K)``): then ``run_context.step -
run_context.start_step`` steps ran in it.

Optional methods make a hooked loop cost nearly nothing per step and agree
across processes:

- ``next_step_of_interest(step)``: the next global step the hook acts on.
  The runner ends a call exactly there and does not call any hook on calls
  that end before the earliest such step of all hooks. The default,
  ``step + 1``, keeps TensorFlow's rule: the hook sees every step. A hook
  with no step of its own (a time trigger) answers ``None`` and says in
  ``due()`` whether the coming call needs it.
- ``device_monitors()``: values the runner keeps on the device, updated
  inside the step's own program, and hands to the hook whenever it reads
  the device anyway (``NanTensorHook``'s first non-finite step).
- ``timers()``: the time timers the hook fires by, which a multi-process
  coordinator shares (process 0's clock decides, every process fires at
  the same step).
- ``accepts_lagged_fetches``: with ``wrap(..., lag_fetches=True)`` the
  values of step N reach ``after_run`` while step N + 1 runs.

The TensorFlow names ``SessionRunHook``, ``SessionRunArgs``,
``SessionRunContext`` and ``SessionRunValues`` are aliases of the classes
here, so a TF1 hook ports by changing its imports.
"""

from __future__ import annotations

import math
from typing import (Any, Callable, Iterable, Mapping, NamedTuple, Optional,
                    Sequence, Tuple, Union)

__all__ = [
    "Hook",
    "DeviceMonitor",
    "NEVER",
    "RunArgs",
    "RunContext",
    "RunValues",
    "Session",
    "GLOBAL_STEP",
    "SessionRunHook",
    "SessionRunArgs",
    "SessionRunContext",
    "SessionRunValues",
]


class _GlobalStep:
  """Fetch marker for the device value of the global step."""

  __slots__ = ()

  def __repr__(self) -> str:
    return "jaxhooks.GLOBAL_STEP"

  def __reduce__(self):
    return "GLOBAL_STEP"


GLOBAL_STEP = _GlobalStep()
"""Put this in ``RunArgs.fetches`` to read the step counter on the device."""

NEVER = math.inf
"""``next_step_of_interest`` returns this when the hook acts on no later
step (it is still called on calls that other hooks need)."""


class DeviceMonitor(NamedTuple):
  """A value the runner keeps on the device for a hook.

  The runner updates it after every step inside the step's program (so a
  fused call updates it once per inner step) and reads it only where it
  reads the device anyway: on a step where some hook fetches something, and
  in ``end``.

  Attributes:
    init: returns the first value (a pytree of arrays).
    update: ``update(value, step, state, outputs) -> value``, traced inside
      the step's program; ``step`` is the device step after the update.
    on_read: ``on_read(host_value, step)``, called on the host with the
      value read at global step ``step``, before any ``after_run`` of that
      step; may raise, or return ``True`` to request stop.

  Example:
    >>> import jax.numpy as jnp
    >>> import jaxhooks as jh
    >>> peak = jh.DeviceMonitor(
    ...     init=lambda: jnp.float32(0),
    ...     update=lambda v, step, state, out: jnp.maximum(v, out["loss"]),
    ...     on_read=lambda v, step: print(f"peak loss {float(v)} by step {step}"))
    >>> peak.on_read(peak.update(peak.init(), 1, None, {"loss": 2.5}), 1)
    peak loss 2.5 by step 1
  """

  init: Callable[[], Any]
  update: Callable[[Any, Any, Any, Any], Any]
  on_read: Callable[[Any, int], Optional[bool]]


class Session(NamedTuple):
  """An immutable view of the training session handed to hooks.

  Attributes:
    state: the train state (a pytree of arrays).
    step: the global step the state holds, counted on the host.
    outputs: the outputs of the last step call, or ``None`` before the first.
    process_index: this process's index (``jax.process_index()``).
    process_count: the number of processes (``jax.process_count()``).
    donates_state: whether the next step call may donate ``state`` (delete
      its arrays); a hook that keeps arrays of it for later must copy them.

  Example:
    >>> import jaxhooks as jh
    >>> session = jh.Session(state={"step": 5}, step=5)
    >>> session.step, session.is_primary
    (5, True)
    >>> session._replace(step=6).step
    6
  """

  state: Any
  step: int
  outputs: Any = None
  process_index: int = 0
  process_count: int = 1
  donates_state: bool = True

  @property
  def is_primary(self) -> bool:
    """True on process 0, where logs and summaries are written."""
    return self.process_index == 0


class RunArgs(NamedTuple):
  """What a hook asks for in ``before_run``.

  Attributes:
    fetches: ``None``, or a nested structure (``list``, ``tuple``, ``dict``)
      whose leaves are output names (``"loss"``), :data:`GLOBAL_STEP`, or
      functions of ``(state, outputs)``. Every hook's fetches of one step are
      read in a single ``jax.device_get``; ``RunValues.results`` has the same
      structure, with host values at the leaves.
    feed_dict: the batch for this step (or a dict merged into a dict batch),
      as ``FeedFnHook`` supplies it.
    options: kept for TensorFlow compatibility; ignored.

  Example:
    >>> import jaxhooks as jh
    >>> jh.RunArgs(fetches={"loss": "loss", "step": jh.GLOBAL_STEP})
    RunArgs(fetches={'loss': 'loss', 'step': jaxhooks.GLOBAL_STEP}, feed_dict=None, options=None)
  """

  fetches: Any = None
  feed_dict: Any = None
  options: Any = None


class RunValues(NamedTuple):
  """What ``after_run`` receives.

  Attributes:
    results: host values of the hook's ``RunArgs.fetches`` (same structure),
      or ``None`` when the hook asked for nothing.
    options: kept for TensorFlow compatibility; always ``None``.
    run_metadata: kept for TensorFlow compatibility; always ``None``.
    step: the global step the state holds after this call.

  Example:
    >>> import jaxhooks as jh
    >>> jh.RunValues(results={"loss": 0.5}, step=100).results["loss"]
    0.5
  """

  results: Any = None
  options: Any = None
  run_metadata: Any = None
  step: int = 0


class RunContext:
  """The context of one step call, handed to ``before_run`` and ``after_run``.

  Its fields are read-only; the one thing a hook may do with it is
  ``request_stop()``.

  Attributes:
    original_args: the ``RunArgs`` of the call (fetches requested by the
      loop itself; ``RunArgs()`` for a plain step).
    session: the :class:`Session` as it was before the call.
    step: the global step the state will hold when this call completes.
    start_step: the global step before the call.

  Example:
    >>> import jaxhooks as jh
    >>> ctx = jh.RunContext(jh.RunArgs(), jh.Session(None, 9), step=10,
    ...                     start_step=9)
    >>> ctx.request_stop(deterministic=True)
    >>> ctx.stop_requested, ctx.local_stop_requested
    (True, False)
  """

  __slots__ = ("_original_args", "_session", "_step", "_start_step",
               "_stop_requested", "_local_stop")

  def __init__(self, original_args: RunArgs, session: Session, step: int,
               start_step: int):
    self._original_args = original_args
    self._session = session
    self._step = step
    self._start_step = start_step
    self._stop_requested = False
    self._local_stop = False

  @property
  def original_args(self) -> RunArgs:
    return self._original_args

  @property
  def session(self) -> Session:
    return self._session

  @property
  def step(self) -> int:
    return self._step

  @property
  def start_step(self) -> int:
    return self._start_step

  @property
  def stop_requested(self) -> bool:
    return self._stop_requested

  @property
  def local_stop_requested(self) -> bool:
    """True when a request may differ between processes (see
    ``request_stop``)."""
    return self._local_stop

  def request_stop(self, *, deterministic: bool = False) -> None:
    """Asks the loop to stop after this step (all ``after_run`` still run).

    Args:
      deterministic: True when every process makes the same request at the
        same step because it follows from the global step alone (as
        ``StopAtStepHook``'s does). Such a stop needs no agreement between
        processes. Other requests are host-local: in a multi-process job the
        coordinator agrees on them at its next check step.
    """
    self._stop_requested = True
    if not deterministic:
      self._local_stop = True

  def __repr__(self) -> str:
    return (f"RunContext(step={self._step}, start_step={self._start_step}, "
            f"stop_requested={self._stop_requested})")


class Hook:
  """Base class of hooks; every method is optional.

  Subclass it and override what you need. The method names and arguments are
  TensorFlow's ``tf.train.SessionRunHook``'s; the ``state_dict`` pair and
  ``on_exception`` are additions for exact resume and for losing nothing.

  Example:
    >>> import jaxhooks as jh
    >>> class PrintEvery10(jh.SessionRunHook):
    ...   def after_run(self, run_context, run_values):
    ...     if run_context.step % 10 == 0:
    ...       print("step", run_context.step)
    >>> PrintEvery10().after_run(
    ...     jh.RunContext(jh.RunArgs(), jh.Session(None, 9), 10, 9),
    ...     jh.RunValues(step=10))
    step 10
  """

  #: Hooks that only write for people to read (logs, summaries, progress)
  #: set this to True; in a multi-process job they run on process 0 only.
  primary_only: bool = False

  #: True when the hook can take the values it fetched at step N in an
  #: ``after_run`` that comes after the ``before_run`` of the next call
  #: (``wrap(..., lag_fetches=True)``): it keys its work on
  #: ``run_values.step`` and ``run_values.results``, not on state set in
  #: ``before_run``, and does not need to stop at an exact step.
  accepts_lagged_fetches: bool = False

  def next_step_of_interest(self, step: int) -> Union[int, float, None]:
    """The first global step after ``step`` this hook acts on.

    The runner ends a call exactly at the earliest such step of all hooks
    (a fused call is cut there) and calls no hook at all on calls that end
    before it. Return :data:`NEVER` when the hook acts on no later step, or
    ``None`` when it cannot know in advance (a time trigger): it is then
    called on calls where ``due()`` is true, and fused calls are not cut for
    it. The default, ``step + 1``, is TensorFlow's rule: the hook sees every
    step. A subclass of a built-in hook that adds work on other steps must
    override this method too.
    """
    return step + 1

  def due(self) -> bool:
    """For a hook whose ``next_step_of_interest`` is ``None``: whether the
    coming call must run it (a time trigger whose period has passed). The
    default, ``True``, runs it on every call."""
    return True

  def timers(self) -> tuple:
    """The :class:`~jaxhooks.timer.SecondOrStepTimer` objects this hook
    fires by. In a multi-process job the coordinator shares the decisions
    of the time timers among them (process 0's clock decides), so that
    they fire at the same step everywhere; a time timer that is not
    declared here fires by each process's own clock."""
    return ()

  def device_monitors(self) -> tuple:
    """:class:`DeviceMonitor` values the runner keeps for this hook."""
    return ()

  def output_names(self) -> Mapping[str, Sequence[str]]:
    """The step outputs this hook fetches by name and reports as numbers,
    by the argument that names them (``{"tensors": ("loss",)}``).

    The runner checks them once, at the first call (see
    ``jaxhooks.scalars.check_outputs``): each must be an output the step
    returns, with one element or equal elements, so that a misspelled name
    fails before any trigger step is lost."""
    return {}

  def begin(self) -> None:
    """Called once before the session is created (before restore)."""

  def after_create_session(self, session: Session, coord: Any) -> None:
    """Called once after restore, with the restored state and the stop
    coordinator (``coord.request_stop()`` stops before the first step)."""

  def before_run(self, run_context: RunContext) -> Optional[RunArgs]:
    """Called before each step call; may return ``RunArgs`` to fetch values."""
    return None

  def after_run(self, run_context: RunContext,
                run_values: RunValues) -> Optional[bool]:
    """Called after each step call; return ``True`` (or call
    ``run_context.request_stop()``) to stop."""
    return None

  def end(self, session: Session) -> None:
    """Called once at the end of training, with the final state."""

  def on_exception(self, session: Session, exc: BaseException) -> None:
    """Called instead of ``end`` when the loop dies of an exception other
    than ``StopIteration``; ``session.state`` is the last good state."""

  def restore(self, state: Any, hooks: tuple) -> Any:
    """Called between ``begin`` and ``after_create_session``. A hook that
    can restore a session (``CheckpointSaverHook``) returns the restored
    state, and restores ``hooks``' own state; others return ``None``."""
    return None

  def state_dict(self) -> Optional[dict]:
    """The hook's own state to save in checkpoints (``None``: nothing)."""
    return None

  def load_state_dict(self, state: dict) -> None:
    """Restores what ``state_dict`` returned."""


def check_hooks(hooks: Iterable[Any]) -> Tuple[Hook, ...]:
  """``hooks`` as a tuple; ``TypeError`` for anything that is not a hook."""
  if isinstance(hooks, Hook):
    raise TypeError(
        f"`hooks` must be a sequence of hooks, got a single {hooks!r}; "
        "wrap it in a list.")
  hooks = tuple(hooks)
  for i, h in enumerate(hooks):
    if not isinstance(h, Hook):
      raise TypeError(
          f"`hooks[{i}]` must be a jaxhooks.SessionRunHook, got {h!r}.")
  return hooks


# TensorFlow's names.
SessionRunHook = Hook
SessionRunArgs = RunArgs
SessionRunContext = RunContext
SessionRunValues = RunValues
