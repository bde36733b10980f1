"""``wrap``: a jitted train step with hooks around it.

The runner keeps the global step on the host: it reads the device step once
after restore, adds one per call, and checks the host count against the
device value whenever values are fetched anyway and at ``end``. A step on
which no hook asks for anything dispatches the train step and returns
without waiting for the device.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple

import jax

from jaxhooks import fetch
from jaxhooks.coord import Coordinator
from jaxhooks.distributed import default_coordinator
from jaxhooks.errors import LifecycleError, StepMismatchError
from jaxhooks.hook import Hook, RunArgs, RunContext, RunValues, Session

__all__ = ["wrap", "HookedStep"]

_NEW, _RUNNING, _STOPPED, _FAILED, _ENDED = range(5)


def _check_hooks(hooks: Iterable[Any]) -> Tuple[Hook, ...]:
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


def _merge_feeds(batch: Any, feeds: List[Any]) -> Any:
  """The batch of a step: the call's batch merged with hooks' feed_dicts."""
  for feed in feeds:
    if batch is None:
      batch = feed
    elif isinstance(batch, Mapping) and isinstance(feed, Mapping):
      both = set(batch) & set(feed)
      if both:
        raise ValueError(
            f"`feed_dict` keys {sorted(map(str, both))} are fed twice (by the "
            "call's batch or another hook).")
      batch = {**batch, **feed}
    else:
      raise TypeError(
          "A hook's `feed_dict` can only be merged into a dict batch or "
          f"replace a missing one; got batch {type(batch).__name__} and "
          f"feed_dict {type(feed).__name__}.")
  return batch


class HookedStep:
  """A train step with hooks; build it with :func:`wrap`.

  Attributes:
    hooks: the hooks, in call order.
    coord: the :class:`~jaxhooks.coord.Coordinator` of stop requests.

  Example:
    >>> import jax, jax.numpy as jnp, jaxhooks as jh
    >>> step = jh.wrap(jax.jit(lambda s, b: ({"step": s["step"] + 1}, {})),
    ...                hooks=[jh.StopAtStepHook(num_steps=2)])
    >>> state = step.begin({"step": jnp.array(7)})
    >>> state, _, stop = step(state)
    >>> step.step, stop, step.should_stop
    (8, False, False)
    >>> state, _, stop = step(state)
    >>> step.step, stop, step.should_stop
    (9, True, True)
  """

  def __init__(self, train_step: Callable[[Any, Any], Tuple[Any, Any]],
               hooks: Iterable[Hook] = (), *,
               step_fn: Optional[Callable[[Any], Any]] = None,
               coord: Optional[Coordinator] = None):
    if not callable(train_step):
      raise TypeError(f"`train_step` must be callable, got {train_step!r}.")
    if step_fn is not None and not callable(step_fn):
      raise TypeError(f"`step_fn` must be callable, got {step_fn!r}.")
    self._train_step = train_step
    self._custom_step_fn = step_fn is not None
    self._step_fn = step_fn or fetch.default_step_fn
    self.coord = coord or default_coordinator()
    # Hooks that only write for people (logs, summaries) run on process 0.
    self.hooks = tuple(h for h in _check_hooks(hooks)
                       if self.coord.is_primary or not h.primary_only)
    self._phase = _NEW
    self._step = 0
    self._state = None
    self._outputs = None
    self._checked_outputs = False
    self._check_every = None

  # -- lifecycle ------------------------------------------------------------

  @property
  def step(self) -> int:
    """The global step of the current state, counted on the host."""
    return self._step

  @property
  def state(self) -> Any:
    """The last good state (the input of a call that failed)."""
    return self._state

  @property
  def should_stop(self) -> bool:
    return self._phase != _RUNNING or self.coord.should_stop()

  def session(self) -> Session:
    """An immutable view of the session now."""
    return Session(self._state, self._step, self._outputs,
                   self.coord.process_index, self.coord.process_count)

  def begin(self, state: Any) -> Any:
    """Runs ``begin``, restore and ``after_create_session``.

    Returns:
      The state to train from: the restored one, or ``state``.
    """
    if self._phase != _NEW:
      raise LifecycleError("`begin` was already called on this hooked step.")
    # Fail on a state without a step before any hook does work.
    fetch.read_step(self._step_fn, state, custom=self._custom_step_fn)
    for hook in self.hooks:
      hook.begin()
    for hook in self.hooks:
      restored = hook.restore(state, self.hooks)
      if restored is not None:
        state = restored
    step = fetch.read_step(self._step_fn, state, custom=self._custom_step_fn)
    self._step = int(jax.device_get(step))
    self._state = state
    self._phase = _RUNNING
    self.coord.bind(self.hooks)
    self._check_every = self.coord.check_every_n_steps
    session = self.session()
    for hook in self.hooks:
      hook.after_create_session(session, self.coord)
    return state

  def __call__(self, state: Any, batch: Any = None) -> Tuple[Any, Any, bool]:
    """Runs one step with hooks.

    Returns:
      ``(state, outputs, stop)``. When the data ends (``StopIteration`` from
      a hook's feed or the step), ``(state, None, True)`` with the state
      unchanged.
    """
    if self._phase != _RUNNING:
      raise LifecycleError(self._misuse("called"))
    if self.coord.should_stop():
      self._phase = _STOPPED
      raise LifecycleError(self._misuse("called"))
    self._state = state
    start, outputs = self._step, self._outputs
    try:
      return self._run(state, batch)
    except StopIteration:
      self._phase = _STOPPED
      self._state, self._step, self._outputs = state, start, outputs
      return state, None, True
    except BaseException as exc:
      # The input of the failed call is the last good state.
      self._state, self._step, self._outputs = state, start, outputs
      self.abort(exc)
      raise

  def _run(self, state: Any, batch: Any) -> Tuple[Any, Any, bool]:
    start = self._step
    step = start + 1
    coord = self.coord
    if self._check_every and step % self._check_every == 0:
      coord.check(step)
    ctx = RunContext(RunArgs(), self.session(), step, start)
    hooks = self.hooks
    requests = [h.before_run(ctx) for h in hooks]
    feeds = [r.feed_dict for r in requests
             if r is not None and r.feed_dict is not None]
    if feeds:
      batch = _merge_feeds(batch, feeds)
    result = self._train_step(state, batch)
    if not self._checked_outputs:
      self._check_result(result)
    new_state, outputs = result
    fetches = [None if r is None else r.fetches for r in requests]
    results = fetches
    if any(f is not None for f in fetches):
      *results, device_step = fetch.resolve_fetches(
          fetches + [fetch.GLOBAL_STEP], new_state, outputs, self._step_fn)
      self._check_step(device_step, step)
    self._step = step
    self._state = new_state
    self._outputs = outputs
    for hook, res in zip(hooks, results):
      if hook.after_run(ctx, RunValues(results=res, step=step)) is True:
        ctx.request_stop()
    if ctx.stop_requested:
      coord.request_stop(f"a hook requested stop at step {step}",
                         deterministic=not ctx.local_stop_requested)
    stop = coord.should_stop()
    if stop:
      self._phase = _STOPPED
    return new_state, outputs, stop

  def end(self, state: Any = None) -> Any:
    """Runs every hook's ``end`` with the final state and returns it.

    The device step of the final state is checked against the host count.
    """
    if self._phase in (_NEW, _ENDED, _FAILED):
      raise LifecycleError(self._misuse("ended"))
    if state is not None:
      self._state = state
    device_step = fetch.read_step(self._step_fn, self._state,
                                  custom=self._custom_step_fn)
    self._check_step(jax.device_get(device_step), self._step)
    self._phase = _ENDED
    session = self.session()
    for hook in self.hooks:
      hook.end(session)
    return self._state

  def abort(self, exc: BaseException) -> None:
    """Marks the session failed and calls every hook's ``on_exception``
    with the last good state (``end`` is not called, as in TensorFlow)."""
    if self._phase in (_FAILED, _ENDED):
      return
    self._phase = _FAILED
    session = self.session()
    for hook in self.hooks:
      hook.on_exception(session, exc)

  # -- checks -----------------------------------------------------------------

  def _misuse(self, verb: str) -> str:
    what = {_NEW: "before `begin(state)`",
            _STOPPED: f"after stop (at step {self._step})",
            _RUNNING: "while running", _FAILED: "after a failed step",
            _ENDED: "after `end`"}[self._phase]
    return f"The hooked step was {verb} {what}."

  def _check_result(self, result: Any) -> None:
    if not isinstance(result, tuple) or len(result) != 2:
      got = (f"a tuple of {len(result)}" if isinstance(result, tuple)
             else type(result).__name__)
      raise TypeError(
          "`train_step` must return `(state, outputs)`, got " + got + ".")
    self._checked_outputs = True

  def _check_step(self, device_step: Any, host_step: int) -> None:
    if int(device_step) != host_step:
      raise StepMismatchError(
          f"The device step is {int(device_step)} but {host_step} steps were "
          "counted on the host: `train_step` must add exactly 1 to the "
          "step of the state per call (or `step_fn` reads the wrong value).")


def wrap(train_step: Callable[[Any, Any], Tuple[Any, Any]],
         hooks: Sequence[Hook] = (), *,
         step_fn: Optional[Callable[[Any], Any]] = None,
         coord: Optional[Coordinator] = None) -> HookedStep:
  """Wraps a train step ``(state, batch) -> (state, outputs)`` with hooks.

  Args:
    train_step: usually a ``jax.jit`` function; called as is, so jaxhooks
      adds no recompilation.
    hooks: the hooks, called in this order.
    step_fn: returns the completed-update count of a state; by default
      ``state.step`` (or ``state["step"]``).
    coord: the stop coordinator; by default a ``DistributedCoordinator``
      in a multi-process job, else a single-process ``Coordinator``.

  Returns:
    A :class:`HookedStep`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import jaxhooks as jh
    >>> @jax.jit
    ... def train_step(state, batch):
    ...   w = state["w"] - 0.1 * batch
    ...   return {"w": w, "step": state["step"] + 1}, {"loss": jnp.sum(w**2)}
    >>> step = jh.wrap(train_step, hooks=[jh.StopAtStepHook(last_step=3)])
    >>> state = step.begin({"w": jnp.ones(2), "step": jnp.array(0)})
    >>> stop = step.should_stop
    >>> while not stop:
    ...   state, outputs, stop = step(state, jnp.ones(2))
    >>> int(step.end(state)["step"])
    3
  """
  return HookedStep(train_step, hooks, step_fn=step_fn, coord=coord)
