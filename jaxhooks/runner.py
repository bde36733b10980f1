"""``wrap``: a jitted train step with hooks around it.

The runner keeps the global step on the host: it reads the device step once
after restore, adds the steps of each call, and checks the host count
against the device value whenever values are fetched anyway and at ``end``.
A step on which no hook asks for anything dispatches the train step and
returns without waiting for the device.

Per call::

  quiet: one step that ends before the earliest next_step_of_interest,
    coord not woken (by a notice or a stop request), no time hook due():
    dispatch; count; return                       # no hook is called
  n = min(steps_per_call, earliest next_step_of_interest - step)
  if the call ends before that step (and no hook wants every call):
    dispatch n steps; count them; return          # no hook is called
  else:
    every before_run; dispatch; one device_get of every fetch, the device
    step, the device monitors and last call's lagged fetches; monitors'
    on_read; lagged after_run of the last call; every after_run
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple

import jax

from jaxhooks import (fetch, lag, nnx_state, process_exit, scalars,
                      signal_handlers)
from jaxhooks.coord import Coordinator
from jaxhooks.distributed import default_coordinator
from jaxhooks.errors import LifecycleError, StepMismatchError
from jaxhooks.failures import Failures
from jaxhooks.hook import (Hook, RunArgs, RunContext, RunValues, Session,
                           check_hooks)
from jaxhooks.jax_private import jit_donate_argnums
from jaxhooks.program import (StepProgram, check_step_result, donates_state,
                              merge_feeds)
from jaxhooks.schedule import Schedule
from jaxhooks.snapshot import was_donated

__all__ = ["HookedStep"]

_NEW, _RUNNING, _STOPPED, _FAILED, _ENDED = range(5)


class HookedStep:
  """A train step with hooks; build it with :func:`jaxhooks.wrap`.

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
               coord: Optional[Coordinator] = None,
               steps_per_call: int = 1,
               batch_fn: Optional[Callable[[Any, Any], Any]] = None,
               lag_fetches: bool = False,
               donate_state: Optional[bool] = None):
    if not callable(train_step):
      raise TypeError(f"`train_step` must be callable, got {train_step!r}.")
    if step_fn is not None and not callable(step_fn):
      raise TypeError(f"`step_fn` must be callable, got {step_fn!r}.")
    if batch_fn is not None and not callable(batch_fn):
      raise TypeError(f"`batch_fn` must be callable, got {batch_fn!r}.")
    if (isinstance(steps_per_call, bool) or not isinstance(steps_per_call, int)
        or steps_per_call < 1):
      raise ValueError(
          f"`steps_per_call` must be an int >= 1, got {steps_per_call!r}.")
    self._train_step = train_step
    self._custom_step_fn = step_fn is not None
    self._step_fn = fetch.step_reader(step_fn)
    self._steps_per_call = steps_per_call
    self._batch_fn = batch_fn
    self._donate = (donates_state(train_step) if donate_state is None
                    else bool(donate_state))
    self._lag_fetches = bool(lag_fetches)
    self._lag = False            # set with the program, in begin
    self.coord = coord or default_coordinator()
    # Hooks that only write for people (logs, summaries) run on process 0;
    # the other processes still cut their calls at those hooks' steps.
    given = check_hooks(hooks)
    self.hooks = tuple(h for h in given
                       if self.coord.is_primary or not h.primary_only)
    self._others = tuple(h for h in given if h not in self.hooks)
    self._phase = _NEW
    self._step = 0
    self._state = None
    self._outputs = None
    self._checked_outputs = False
    self._program: Optional[StepProgram] = None
    self._live: Optional[nnx_state.LiveObjects] = None   # NNX objects
    self._readers: Tuple[Callable, ...] = ()
    self._values: tuple = ()
    self._plan = Schedule(steps_per_call=steps_per_call, check_every=None)
    self._lagged: Optional[lag.Lagged] = None  # (ctx, [(hook, values)])
    self._donates = True          # whether the next call may donate the state
    # The quiet path (see _set_quiet): calls from a step below this run no
    # hook, unless coord is woken or one of these due() says so.
    self._quiet_until: Any = -1
    self._due: Tuple[Callable[[], bool], ...] = ()
    self._step_error: Optional[BaseException] = None
    self._stop_told = False

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
    stop = self._phase != _RUNNING or self.coord.should_stop()
    self._stop_told = stop   # a call after this is misuse (see __call__)
    return stop

  @property
  def steps_per_call(self) -> int:
    return self._steps_per_call

  @property
  def steps_next_call(self) -> int:
    """How many steps the next call runs (its stacked batch's rows)."""
    return self._plan.chunk(self._step)

  def session(self) -> Session:
    """An immutable view of the session now."""
    return Session(self._state, self._step, self._outputs,
                   self.coord.process_index, self.coord.process_count,
                   self._donates)

  def begin(self, state: Any) -> Any:
    """Runs ``begin``, restore and ``after_create_session``.

    When any of them fails, the hooks whose ``begin`` ran get
    ``on_exception`` (signal handlers are put back, directories unlocked)
    and the error is raised; the session is then failed.

    Returns:
      The state to train from: the restored one, or ``state``.
    """
    if self._phase != _NEW:
      raise LifecycleError("`begin` was already called on this hooked step.")
    # Fail on a state without a step before any hook does work.
    fetch.read_step(self._step_fn, state, custom=self._custom_step_fn)
    self._live = nnx_state.bind(state, program=self._wants_program)
    given = state
    self._state = state
    begun: List[Hook] = []
    try:
      for hook in self.hooks:
        begun.append(hook)
        hook.begin()
      for hook in self.hooks:
        restored = hook.restore(state, self.hooks)
        if restored is not None:
          state = restored
      if self._live is not None:   # the user's NNX objects stay the live ones
        state = self._live.adopt(given, state)
      self._state = state
      step = fetch.read_step(self._step_fn, state,
                             custom=self._custom_step_fn)
      self._step = int(jax.device_get(step))
      self._phase = _RUNNING
      self.coord.bind(self.hooks)
      self.coord.watch(self._running_step)
      self._plan.check_every = self.coord.check_every_n_steps
      self._build_program()
      session = self.session()
      for hook in self.hooks:
        hook.after_create_session(session, self.coord)
      self._replan(self._step, first=True)
    except BaseException as exc:
      self._end_hooks(_FAILED, begun, "on_exception", exc)
      raise
    process_exit.track(self)
    return state

  def _wants_program(self) -> bool:
    """Whether jaxhooks runs the step in a program of its own."""
    return (self._steps_per_call > 1 or self._batch_fn is not None
            or any(hook.device_monitors() for hook in self.hooks))

  def _running_step(self) -> Optional[int]:
    """The host step while the loop runs, ``None`` after (for the
    coordinator's watchdog; read from its thread)."""
    return self._step if self._phase == _RUNNING else None

  def _build_program(self) -> None:
    monitors = [m for hook in self.hooks for m in hook.device_monitors()]
    self._readers = tuple(m.on_read for m in monitors)
    if self._wants_program():
      self._program = StepProgram(
          self._train_step, step_fn=self._step_fn, monitors=monitors,
          steps_per_call=self._steps_per_call, batch_fn=self._batch_fn,
          donate_state=self._donate, live=self._live)
      self._values = self._program.init_monitors()
    # The program donates as told; a plain call donates as the train step
    # does, which is known for a `jax.jit` function only.
    if self._program is not None:
      self._donates = self._donate
    elif jit_donate_argnums(self._train_step) is not None:
      self._donates = donates_state(self._train_step)
    else:
      self._donates = True
    # Held values may be leaves of a state the next call donates.
    self._lag = self._lag_fetches and not self._donates

  def __call__(self, state: Any, batch: Any = None) -> Tuple[Any, Any, bool]:
    """Runs one call (one step, or up to ``steps_per_call``) with hooks.

    Returns:
      ``(state, outputs, stop)``. When the data ends (``StopIteration`` from
      a hook's feed or the step), ``(state, None, True)`` with the state
      unchanged.
    """
    start, coord = self._step, self.coord
    # The quiet path: one step that no hook acts on. Only while running
    # (_leave ends it) and no stop is requested (a request wakes coord).
    quiet = start < self._quiet_until and not coord.awake
    if quiet:
      for due in self._due:
        if due():
          quiet = False
          break
    if quiet:  # dispatch and count, nothing else
      self._state = state   # the last good state, should the call fail
      try:
        program = self._program
        if program is None:
          new_state, new_outputs = self._train_step(state, batch)
        else:
          new_state, new_outputs, self._values = program.jitted(
              state, batch, self._values)
      except StopIteration:
        self._leave(_STOPPED)
        return state, None, True
      except BaseException as exc:
        self._fail(exc, state, in_step=True)
        raise
      self._step = start + 1
      self._state, self._outputs = new_state, new_outputs
      return new_state, new_outputs, False
    if self._phase != _RUNNING:
      raise LifecycleError(self._misuse("called"))
    if coord.should_stop():
      # A stop the caller was not told of yet (one requested by another
      # thread since its last look) is told now: no step runs.
      self._leave(_STOPPED)
      if not self._stop_told:
        self._stop_told = True
        return state, None, True
      raise LifecycleError(self._misuse("called"))
    self._state = state
    outputs, values, lagged = self._outputs, self._values, self._lagged
    try:
      plan = self._plan
      n = plan.chunk(start)
      hooks = plan.select(start, n, coord.awake)
      if hooks is not None:
        return self._run(state, batch, n, hooks)
      # No hook acts on this call: dispatch and count, nothing else.
      new_state, new_outputs = self._step_call(state, batch, n)
      self._step = start + n
      self._state, self._outputs = new_state, new_outputs
      return new_state, new_outputs, False
    except StopIteration:
      self._leave(_STOPPED)
      self._state, self._step, self._outputs = state, start, outputs
      self._values, self._lagged = values, lagged
      return state, None, True
    except BaseException as exc:
      # The input of the failed call is the last good state.
      self._state, self._step, self._outputs = state, start, outputs
      self._values, self._lagged = values, lagged
      self._fail(exc, state, in_step=exc is self._step_error)
      raise

  def _step_call(self, state: Any, batch: Any, n: int) -> Tuple[Any, Any]:
    """``_dispatch``, noting an error it raises as the step's own."""
    try:
      return self._dispatch(state, batch, n)
    except Exception as e:
      self._step_error = e
      raise

  def _fail(self, exc: BaseException, state: Any, *, in_step: bool) -> None:
    """Decides what a call that raised ``exc`` does to the session.

    The call failed, the session goes on (the caller may catch the error
    and go on with the same state, as in TensorFlow): an ``Exception``
    raised by the train step itself (or the batch it was given), in one
    process, with the input state intact. Anything else (a hook's error,
    ``KeyboardInterrupt``, a donated input state, several processes, whose
    collectives cannot be re-entered) ends the session: ``abort``.
    """
    self._step_error = None
    if (in_step and isinstance(exc, Exception)
        and self.coord.process_count == 1 and not was_donated(state)):
      self.coord.wake()   # the next call runs every hook, as this one did
      return
    self.abort(exc)

  def _dispatch(self, state: Any, batch: Any, n: int) -> Tuple[Any, Any]:
    program = self._program
    if program is None:
      return self._train_step(state, batch)
    if program.fused:
      batch = program.check_batch(batch, n)
      new_state, outputs, self._values = program(state, batch, self._values, n)
    else:
      new_state, outputs, self._values = program.jitted(state, batch,
                                                        self._values)
    return new_state, outputs

  def _run(self, state: Any, batch: Any, n: int,
           hooks: Sequence[Hook]) -> Tuple[Any, Any, bool]:
    start = self._step
    step = start + n
    coord = self.coord
    # This call runs the hooks: a wake (a notice, a stop request) from now
    # on is for the next call.
    coord.awake = False
    check = self._plan.check_every
    if check and step % check == 0:
      coord.check(step)
    ctx = RunContext(RunArgs(), self.session(), step, start)
    requests = [h.before_run(ctx) for h in hooks]
    feeds = [r.feed_dict for r in requests
             if r is not None and r.feed_dict is not None]
    if feeds:
      batch = merge_feeds(batch, feeds)
    result = self._step_call(state, batch, n)
    if not self._checked_outputs:
      check_step_result(result)
      scalars.check_outputs(self.hooks, result[1])
      self._checked_outputs = True
    new_state, outputs = result
    fetches = [None if r is None else r.fetches for r in requests]
    held = lag.lagging(hooks, fetches) if self._lag else []
    held_fetches = [fetches[i] for i in held]
    for i in held:
      fetches[i] = None
    results = fetches
    previous, self._lagged = self._lagged, None
    wants = [i for i, f in enumerate(fetches) if f is not None]
    monitors = self._reads_monitors(hooks, wants,
                                    bool(check and step % check == 0))
    if previous is not None or wants or monitors:
      results = self._read(fetches, new_state, outputs, step, previous,
                           monitors)
    if held:
      self._lagged = lag.hold(ctx, [hooks[i] for i in held],
                              held_fetches,
                              new_state, outputs, self._step_fn)
    self._step = step
    self._state = new_state
    self._outputs = outputs
    for i, (hook, res) in enumerate(zip(hooks, results)):
      if i in held:
        continue
      if hook.after_run(ctx, RunValues(results=res, step=step)) is True:
        ctx.request_stop()
    if ctx.stop_requested:
      coord.request_stop(f"a hook requested stop at step {step}",
                         deterministic=not ctx.local_stop_requested)
    if coord.should_stop() and self._lagged is not None:
      self._deliver_lagged()
    stop = coord.should_stop()
    if stop:
      self._leave(_STOPPED)
    else:
      self._replan(step)   # a hook that ran may act sooner now
    return new_state, outputs, stop

  def _reads_monitors(self, hooks: Sequence[Hook], wants: List[int],
                      check_step: bool) -> bool:
    """Whether this call reads the device monitors. In one process: with
    any read. In several: only where every process reads, so that all of
    them see a NaN at the same step: check steps, and reads asked by hooks
    that run on every process."""
    if not self._readers:
      return False
    if self.coord.process_count == 1:
      return bool(wants)
    return check_step or any(not hooks[i].primary_only for i in wants)

  def _read(self, fetches: List[Any], state: Any, outputs: Any, step: int,
            previous: Any, monitors: bool) -> List[Any]:
    """Reads the fetches of this call, the device step, the monitors (if
    ``monitors``) and the last call's lagged fetches, in one
    ``jax.device_get``; calls the monitors' ``on_read`` and delivers the
    lagged values."""
    extra = [fetch.GLOBAL_STEP]
    device = fetch.device_fetches(fetches + extra, state, outputs,
                                  self._step_fn)
    lagged = [] if previous is None else previous.device
    values = jax.device_get((device, self._values if monitors else (),
                             lagged))
    (*results, device_step), monitor_values, lagged = values
    self._check_step(device_step, step)
    self._on_read(monitor_values, step)
    lag.deliver(previous, lagged, self.coord)
    return results

  def _on_read(self, monitors: Sequence[Any], step: int) -> None:
    for on_read, value in zip(self._readers, monitors):
      if on_read(value, step) is True:
        self.coord.request_stop(f"a device monitor requested stop at step "
                                f"{step}")

  def _deliver_lagged(self) -> None:
    """Reads and hands over the held lagged fetches now."""
    held, self._lagged = self._lagged, None
    if held is not None:
      lag.deliver(held, jax.device_get(held.device), self.coord)

  def _replan(self, step: int, first: bool = False) -> None:
    """After ``begin`` (``first``: the first call runs every hook) or a call
    that ran hooks: plans the next calls."""
    self._plan.update(self.hooks, step, self._others)
    self._plan.full_next = first or self._lagged is not None
    self._set_quiet()

  def _leave(self, phase: int) -> None:
    """Ends the running phase (and the quiet path with it)."""
    self._phase = phase
    self._quiet_until = -1

  def _set_quiet(self) -> None:
    """Plans the quiet path of ``__call__``: what ``Schedule.select`` says
    of one-step calls, as a bound on the step and the due() checks."""
    plan, program = self._plan, self._program
    one_step = plan.steps_per_call == 1 and not (program and program.fused)
    self._quiet_until = (plan.horizon - 1 if one_step and not plan.full_next
                         else -1)
    self._due = tuple(h.due for h in plan.each_call)

  def end(self, state: Any = None) -> Any:
    """Runs every hook's ``end`` with the final state and returns it.

    Pending lagged fetches are delivered first; the device step of the
    final state is checked against the host count, and device monitors are
    read a last time.
    """
    if self._phase in (_NEW, _ENDED, _FAILED):
      raise LifecycleError(self._misuse("ended"))
    if state is not None:
      self._state = state
    try:
      self._deliver_lagged()
      device_step = fetch.read_step(self._step_fn, self._state,
                                    custom=self._custom_step_fn)
      device_step, monitors = jax.device_get((device_step, self._values))
      self._check_step(device_step, self._step)
      self._on_read(monitors, self._step)
    except BaseException as exc:
      self.abort(exc)
      raise
    self._end_hooks(_ENDED, self.hooks, "end")
    return self._state

  def abort(self, exc: BaseException) -> None:
    """Marks the session failed and calls every hook's ``on_exception``
    with the last good state (``end`` is not called, as in TensorFlow).
    Errors of those calls are attached to ``exc`` as notes."""
    if self._phase in (_FAILED, _ENDED):
      return
    self._lagged = None
    self._end_hooks(_FAILED, self.hooks, "on_exception", exc)

  def _end_hooks(self, phase: int, hooks: Sequence[Hook], method: str,
                 exc: Optional[BaseException] = None) -> None:
    """Leaves the session for ``phase`` and calls ``method`` of every hook
    in ``hooks``, even after one raised. ``end``: the first error (an
    error reported to ``coord`` first) is raised, the others attached to
    it. ``on_exception``: errors are attached to ``exc``."""
    self._leave(phase)
    process_exit.untrack(self)
    self.coord.unwatch()
    session = self.session()
    failures = Failures(exc)
    args: tuple = (session,) if exc is None else (session, exc)
    for error in self.coord.errors:   # raised first, or attached to exc
      failures.add(error, "a stop request")
    # Ending on an exception, signals act as they did before the session:
    # a SIGTERM or Ctrl-C now must not just set a flag no loop reads.
    with (signal_handlers.passthrough() if exc is not None
          else contextlib.nullcontext()):
      for hook in hooks:
        failures.run(f"`{type(hook).__name__}.{method}`",
                     getattr(hook, method), *args)
    if exc is None:
      failures.raise_first()

  # -- checks -----------------------------------------------------------------

  def _misuse(self, verb: str) -> str:
    errors = "".join(f" The stop came with {type(e).__name__}: {e}; `end()` "
                     "raises it." for e in self.coord.errors)
    return self._misuse_phase(verb) + errors

  def _misuse_phase(self, verb: str) -> str:
    what = {_NEW: "before `begin(state)`",
            _STOPPED: f"after stop (at step {self._step})",
            _RUNNING: "while running", _FAILED: "after a failed step",
            _ENDED: "after `end`"}[self._phase]
    return f"The hooked step was {verb} {what}."

  def _check_step(self, device_step: Any, host_step: int) -> None:
    if int(device_step) != host_step:
      raise StepMismatchError(
          f"The device step is {int(device_step)} but {host_step} steps were "
          "counted on the host: `train_step` must add exactly 1 to the "
          "step of the state per call (or `step_fn` reads the wrong value).")
