"""``CheckpointSaverHook``: Orbax checkpoints that lose nothing.

The hook restores the latest complete checkpoint when the session starts and
saves while it runs::

  begin()                 check checkpoint_dir is writable, open the manager,
                          install the SIGTERM handler
  restore(state, hooks)   latest complete step -> train state (into the
                          given state's structure and shardings), every
                          hook's load_state_dict, the data position
  after_create_session()  save the start state if save_on_start
  before_run(step s)      s % save_steps == 0, save_secs passed, or the
                          preemption step agreed by coord -> fetch the
                          finiteness of the new state (one device_get)
  after_run(step s)       finite: wait for the previous write (raise its
                          error), start an async save of step s (train
                          state, hooks' state_dict, data position);
                          preemption: wait until it is written, stop
  end()                   wait for pending writes; final save unless that
                          step is written; wait; then raise a failed write
  on_exception()          wait for pending writes (a failure becomes a note
                          on the exception); save the last good state if
                          save_on_exception

The hook saves in its ``after_run``, so it sees the ``after_run`` effects
of the hooks placed before it: put it after hooks whose counters it saves
(``MonitoredTrainingSession`` puts it after the user's hooks).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import jax

from jaxhooks import checkpoint_io as cio
from jaxhooks import process_exit
from jaxhooks import scalars
from jaxhooks.checkpoint_listener import CheckpointSaverListener
from jaxhooks.checkpoint_lock import DirectoryLock
from jaxhooks.checkpoint_restore import check_foreign, restore_checkpoint
from jaxhooks.checkpoint_writes import CheckpointWrites, add_note
from jaxhooks.errors import LifecycleError, NonFiniteStateError
from jaxhooks.hook import NEVER, Hook, RunArgs, RunContext, RunValues, Session
from jaxhooks.preemption import PreemptionNotice, preemption_reached
from jaxhooks.snapshot import BackgroundWriter, was_donated
from jaxhooks.timer import Clock, SecondOrStepTimer, check_period

__all__ = ["CheckpointSaverHook", "CheckpointSaverListener"]

log = logging.getLogger("jaxhooks")


def _check_int(name: str, value: Any, minimum: int) -> Optional[int]:
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"`{name}` must be an int >= {minimum} or None, got "
                     f"{value!r}.")
  return value


def _check_choice(name: str, value: Any, choices: Tuple[str, str]) -> str:
  if value not in choices:
    raise ValueError(f"`{name}` must be {choices[0]!r} or {choices[1]!r}, "
                     f"got {value!r}.")
  return value


def _end_earlier_sessions(directory: str) -> None:
  """Aborts the sessions of this process left open (not ended) that still
  hold ``directory``: a notebook cell run again after an error, say. A
  session open in another process keeps its lock (``DirectoryLock``)."""
  for session in process_exit.open_sessions():
    if any(isinstance(h, CheckpointSaverHook) and h._lock.held
           and os.path.realpath(h.checkpoint_dir) == os.path.realpath(
               directory) for h in session.hooks):
      error = LifecycleError(
          f"A new session on `checkpoint_dir` {directory!r} ended this one, "
          f"left open at step {session.step} without `end()`.")
      log.warning("%s Its pending writes are finished and its hooks' "
                  "`on_exception` run.", error)
      session.abort(error)


class CheckpointSaverHook(Hook):
  """Saves and restores the train state with Orbax.

  Args:
    checkpoint_dir: the directory of the ``CheckpointManager`` (local path or
      any ``etils.epath`` URL such as ``gs://``).
    save_steps: save on global steps that are multiples of this.
    save_secs: save the first step that starts at least this many seconds
      after the last save (the period starts with the session).
      At most one of the two; with neither, the hook saves only at the start
      (``save_on_start``), on preemption and at the end.
    max_to_keep: how many checkpoints to keep (``None``: all).
    keep_period: also keep every checkpoint whose step is a multiple of this.
    best_metric: keep the ``max_to_keep`` best checkpoints by this output of
      the step (read on save steps) instead of the latest ones; the latest
      checkpoint is always kept too, so that a restart resumes from it.
      A NaN value never counts as better: it ranks last.
    best_mode: ``"min"`` or ``"max"`` for ``best_metric``.
    save_on_start: save the state training starts from (TF1 saved it in
      ``after_create_session``), unless that step is already on disk.
    listeners: ``CheckpointSaverListener`` objects.
    async_save: write in the background; the loop is blocked for the
      finiteness check and, when the next step call donates the state, a
      copy of it (see ``jaxhooks.snapshot``). One process writes on a worker
      thread of its own; several use Orbax's async checkpointing.
    save_on_preemption: handle SIGTERM: save at the agreed step, wait, stop.
    save_on_exception: when the loop dies of an exception, save the last good
      state (if finite and not already saved). A state donated to the failed
      step call (``jax.jit(..., donate_argnums=0)``) is gone and cannot be
      saved: the hook then says so and keeps the last checkpoint.
    on_nonfinite: a save of a state with NaN or inf is refused. While
      training runs, ``"raise"`` raises ``NonFiniteStateError`` and
      ``"stop"`` logs an error and stops training. A session that is
      already stopping (the final save in ``end``, an exception, a save on
      the step at which a stop was requested, such as that of
      ``NanTensorHook(fail_on_nan_loss=False)``) ends cleanly either way:
      the non-finite state is not saved, an error is logged and the last
      good checkpoint stays the latest.
    data_iterator: an iterator with ``get_state()``/``set_state(state)`` (as
      grain's are); its position is saved with the state and restored.
    data_state: instead of ``data_iterator``, a pair of functions
      ``(get_state, set_state)``.
    restore_dtypes: ``"exact"``: a saved leaf whose dtype differs from the
      state's is a ``CheckpointMismatchError`` naming the leaves (a float32
      checkpoint is not truncated into an int32 state); ``"cast"``: the
      saved values are cast to the state's dtypes (to restore a float32
      run into a bfloat16 state, say).
    foreign_checkpoints: when ``checkpoint_dir`` holds no jaxhooks
      checkpoint but checkpoints of another tool (a Flax
      ``checkpoint_220``, a TF ``model.ckpt-1000.index``, a directory of
      Orbax files): ``"raise"`` a ``CheckpointError`` naming them at
      ``begin``, before any training; ``"warn"``: log a warning naming them
      and train from the state given to ``begin``. To import such a
      checkpoint, restore it into the state yourself and hand that state
      (its step included) to ``begin`` with ``"warn"``.
    clock: time source for ``save_secs`` (tests inject one).

  Example:
    >>> import tempfile, jax, jax.numpy as jnp
    >>> import jaxhooks as jh
    >>> train_step = jax.jit(lambda s, b: ({"w": s["w"] * 2,
    ...                                     "step": s["step"] + 1}, {}))
    >>> ckpt_dir = tempfile.mkdtemp()
    >>> def run(last_step):
    ...   saver = jh.CheckpointSaverHook(ckpt_dir, save_steps=2)
    ...   step = jh.wrap(train_step, [jh.StopAtStepHook(last_step=last_step),
    ...                               saver])
    ...   state = step.begin({"w": jnp.ones(2), "step": jnp.array(0)})
    ...   stop = step.should_stop
    ...   while not stop:
    ...     state, _, stop = step(state)
    ...   step.end(state)
    ...   return state, saver.all_steps()
    >>> run(3)[1]
    [2, 3]
    >>> state, steps = run(5)            # resumes from step 3
    >>> state["w"].tolist(), steps
    ([32.0, 32.0], [2, 3, 4, 5])
  """

  def __init__(self, checkpoint_dir: Any, *, save_steps: Optional[int] = None,
               save_secs: Optional[float] = None,
               max_to_keep: Optional[int] = 5,
               keep_period: Optional[int] = None,
               best_metric: Optional[str] = None, best_mode: str = "min",
               save_on_start: bool = False,
               listeners: Sequence[CheckpointSaverListener] = (),
               async_save: bool = True, save_on_preemption: bool = True,
               save_on_exception: bool = False, on_nonfinite: str = "raise",
               data_iterator: Any = None,
               data_state: Optional[Tuple[Callable, Callable]] = None,
               restore_dtypes: str = "exact",
               foreign_checkpoints: str = "raise",
               clock: Optional[Clock] = None):
    if not isinstance(checkpoint_dir, str) and not hasattr(
        checkpoint_dir, "__fspath__"):
      raise TypeError("`checkpoint_dir` must be a path, got "
                      f"{checkpoint_dir!r}.")
    if not str(os.fspath(checkpoint_dir)).strip():
      raise ValueError("`checkpoint_dir` must name a directory, got "
                       f"{checkpoint_dir!r}.")
    if save_steps is not None and save_secs is not None:
      raise ValueError(
          "At most one of `save_steps` and `save_secs` may be given, got "
          f"save_steps={save_steps!r}, save_secs={save_secs!r}.")
    self._timer = None
    if save_steps is not None or save_secs is not None:
      self._timer = SecondOrStepTimer(every_secs=save_secs,
                                      every_steps=save_steps, clock=clock,
                                      names=("save_secs", "save_steps"))
    self._max_to_keep = _check_int("max_to_keep", max_to_keep, 1)
    self._keep_period = _check_int("keep_period", keep_period, 1)
    _check_choice("best_mode", best_mode, ("min", "max"))
    if best_metric is not None and not isinstance(best_metric, str):
      raise ValueError("`best_metric` must be the name of an output, got "
                       f"{best_metric!r}.")
    self._restore_dtypes = _check_choice("restore_dtypes", restore_dtypes,
                                         ("exact", "cast"))
    self._foreign = _check_choice("foreign_checkpoints", foreign_checkpoints,
                                  ("raise", "warn"))
    _check_choice("on_nonfinite", on_nonfinite, ("raise", "stop"))
    for i, listener in enumerate(listeners):
      if not isinstance(listener, CheckpointSaverListener):
        raise TypeError(f"`listeners[{i}]` must be a CheckpointSaverListener,"
                        f" got {listener!r}.")
    self._data = cio.data_position_functions(data_iterator, data_state)
    check_period("save_secs", save_secs)
    self.checkpoint_dir = cio.absolute(checkpoint_dir)
    self._best_metric, self._best_mode = best_metric, best_mode
    self._save_on_start = bool(save_on_start)
    self._listeners = tuple(listeners)
    self._async = bool(async_save)
    self._save_on_preemption = bool(save_on_preemption)
    self._save_on_exception = bool(save_on_exception)
    self._on_nonfinite = on_nonfinite
    self._notice = PreemptionNotice()
    self._writes: Optional[CheckpointWrites] = None   # begin() to end()
    self._lock = DirectoryLock(self.checkpoint_dir)
    self._open = False
    self._hooks: Tuple[Hook, ...] = (self,)
    self._coord: Any = None   # the coordinator given to after_create_session
    self._poll_service = False
    self._pending: Optional[Tuple[int, bool]] = None   # (step, preempted)
    self._captured = None     # the new state, captured by the fetch
    self.restored_step: Optional[int] = None

  @property
  def _open_writes(self) -> CheckpointWrites:
    assert self._writes is not None, "made by begin"
    return self._writes

  # -- public helpers -------------------------------------------------------

  @property
  def manager(self):
    """The Orbax ``CheckpointManager`` (between ``begin`` and ``end``)."""
    return self._writes.manager if self._open else None

  @property
  def last_saved_step(self) -> Optional[int]:
    """The last step saved (or restored); after a failed write, the last
    step written."""
    return None if self._writes is None else self._writes.saved_step

  @property
  def preemption_notice(self) -> PreemptionNotice:
    return self._notice

  def all_steps(self) -> list:
    """The steps of the complete checkpoints on disk."""
    if self._open:
      return sorted(self._open_writes.manager.all_steps())
    manager = cio.make_manager(self.checkpoint_dir, max_to_keep=None,
                               keep_period=None, best_metric=None,
                               best_mode="min", async_save=False,
                               read_only=True)
    try:
      return sorted(manager.all_steps())
    finally:
      manager.close()

  def wait_until_finished(self) -> None:
    """Blocks until pending writes are done; raises a failed write's error
    (``last_saved_step`` is then the last step that was written)."""
    if self._open:
      self._open_writes.wait()

  # -- hook methods ---------------------------------------------------------

  def begin(self) -> None:
    index = jax.process_index()
    cio.check_writable(self.checkpoint_dir, index)
    # Before the manager opens (and cleans up) anything in the directory.
    if index == 0:
      _end_earlier_sessions(self.checkpoint_dir)
      self._lock.acquire()
    # Orbax's own async saves run their barriers across processes; one
    # process writes synchronously on the worker thread instead.
    several = jax.process_count() > 1
    manager = cio.make_manager(
        self.checkpoint_dir, max_to_keep=self._max_to_keep,
        keep_period=self._keep_period, best_metric=self._best_metric,
        best_mode=self._best_mode, async_save=self._async and several)
    writer = BackgroundWriter() if self._async and not several else None
    self._writes = CheckpointWrites(manager, self.checkpoint_dir, writer,
                                    blocking=not self._async)
    self._open = True
    self.restored_step = None
    self._pending = self._captured = None
    if self._timer is not None:
      self._timer.reset()
    self._notice.clear()
    if self._save_on_preemption:
      self._notice.install()
    for listener in self._listeners:
      listener.begin()

  def restore(self, state: Any, hooks: tuple) -> Any:
    self._hooks = tuple(hooks) or (self,)
    step = self._open_writes.manager.latest_step()
    if step is None:
      check_foreign(self.checkpoint_dir, self._foreign)
      return None
    restored, hook_states, data = restore_checkpoint(
        self._open_writes.manager, step, state,
        with_data=self._data is not None,
        cast_dtypes=self._restore_dtypes == "cast")
    cio.load_hook_states(self._hooks, hook_states)
    if self._data is not None and data is not None:
      self._data[1](data)
    self.restored_step = step
    self._open_writes.restored(step)
    log.info("Restored the checkpoint of step %d from %s.", step,
             self.checkpoint_dir)
    return restored

  def output_names(self) -> dict:
    if self._best_metric is None:
      return {}
    return {"best_metric": (self._best_metric,)}

  def after_create_session(self, session: Session, coord: Any) -> None:
    # Every hook's state_dict() must be JSON before a step can be lost:
    # checked by the code that writes it.
    cio.hook_states(self._hooks)
    self._coord = coord
    # The coordinator learns of a notice as it arrives.
    self._notice.forward_to(coord.notify_preemption)
    # Without our SIGTERM handler (off the main thread) a multi-process job
    # learns of a preemption from JAX's preemption service only, which is
    # asked at each call that runs this hook: then run it on every call.
    self._poll_service = (self._save_on_preemption and
                          coord.process_count > 1 and
                          not self._notice.installed)
    if self._timer is not None:
      self._timer.update_last_triggered_step(session.step)
    if self._save_on_start and session.step != self.last_saved_step:
      self._save(session, finite=None, metrics=None)

  def _capture(self, state: Any, outputs: Any) -> Any:
    self._captured = state
    return cio.all_finite(state)

  def next_step_of_interest(self, step: int):
    if self._save_on_preemption and self._coord is not None:
      nxt = self._coord.next_preemption_step(step,
                                             notified=self._notice.received)
      if nxt is not None:
        return nxt
    if self._poll_service:
      return None
    if self._timer is None:
      return NEVER
    return self._timer.next_trigger_step(step)

  def due(self) -> bool:
    return self._poll_service or (self._timer is not None and
                                  self._timer.due())

  def timers(self) -> tuple:
    return () if self._timer is None else (self._timer,)

  def before_run(self, run_context: RunContext) -> Optional[RunArgs]:
    step = run_context.step
    preempted = self._save_on_preemption and self._coord is not None and (
        preemption_reached(self._coord, self._notice, step,
                           manager=self._open_writes.manager))
    periodic = (self._timer is not None
                and self._timer.should_trigger_for_step(step))
    if not (preempted or periodic):
      return None
    self._pending = (step, preempted)
    fetches: Dict[str, Any] = {"finite": self._capture}
    if self._best_metric is not None:
      fetches["metric"] = self._best_metric
    return RunArgs(fetches=fetches)

  def after_run(self, run_context: RunContext,
                run_values: RunValues) -> Optional[bool]:
    if self._pending is None:
      return None
    step, preempted = self._pending
    state, self._captured, self._pending = self._captured, None, None
    if self._timer is not None:
      self._timer.update_last_triggered_step(step)
    metrics = None
    if self._best_metric is not None:
      metrics = {self._best_metric: self._metric(run_values.results["metric"])}
    session = run_context.session._replace(state=state, step=step)
    # Whether the loop stops after this step, as every process sees it.
    coord = self._coord
    stopping = coord.should_stop() or run_context.stop_requested and (
        coord.process_count == 1 or not run_context.local_stop_requested)
    saved, stop = self._save(session, finite=bool(
        run_values.results["finite"]), metrics=metrics, stopping=stopping)
    if preempted:
      self.wait_until_finished()
      self._notice.acted_on()
      if self._notice.received:
        log.warning("Preemption notice (%s): saved step %d, stopping.",
                    self._notice.signal_name, step)
      else:
        log.warning("Preemption agreed with the other processes (the notice "
                    "came to another one): saved step %d, stopping.", step)
      run_context.request_stop(deterministic=True)  # an agreed step
    if not saved:  # non-finite: a global value, the same on every process
      run_context.request_stop(deterministic=True)
    if stop:  # a listener's decision may be host-local: agreed by coord
      run_context.request_stop()
    return None

  def end(self, session: Session) -> None:
    # A failed earlier write does not keep the final state from being saved
    # (it may be the step that failed); its error is raised after that.
    failure = self._open_writes.failure()
    try:
      if session.step != self.last_saved_step:
        self._save(session, finite=None, metrics=self._end_metrics(session),
                   last=True, stopping=True)
      self.wait_until_finished()
      for listener in self._listeners:
        listener.end(session, session.step)
    except BaseException as exc:
      if failure is not None:
        add_note(exc, failure)
      self._close(exc)
      raise
    self._close()
    if failure is not None:
      raise failure

  def on_exception(self, session: Session, exc: BaseException) -> None:
    # The loop is ending: a SIGTERM from now on must act as it did before.
    self._notice.uninstall()
    if not self._open:   # begin failed before the manager opened
      self._close(exc)
      return
    failure = self._open_writes.failure()
    if failure is not None:
      add_note(exc, failure)
    try:
      # Only a session that started (not a failed begin) has a state to save.
      if (self._save_on_exception and self._coord is not None
          and session.step != self.last_saved_step):
        if was_donated(session.state):
          kept = ("no checkpoint was written" if self.last_saved_step is None
                  else f"the last checkpoint (step {self.last_saved_step}) "
                  "is kept")
          add_note(exc, f"the train state of step {session.step} was donated "
                   "to the failed step call, so it cannot be saved; " + kept
                   + ".")
        else:
          self._save(session, finite=None, metrics=None, last=True,
                     stopping=True)
    except Exception as e:  # report, but keep the original exception
      add_note(exc, e)
    self._close(exc)

  def state_dict(self) -> Optional[dict]:
    return None

  # -- saving ---------------------------------------------------------------

  def _end_metrics(self, session: Session) -> Optional[dict]:
    outputs = session.outputs
    if (self._best_metric is None or not isinstance(outputs, Mapping)
        or self._best_metric not in outputs):
      return None
    return {self._best_metric: self._metric(jax.device_get(
        outputs[self._best_metric]))}

  def _metric(self, value: Any) -> float:
    return float(scalars.scalar(value, who="CheckpointSaverHook `best_metric`",
                                name=self._best_metric))

  def _save(self, session: Session, *, finite: Optional[bool],
            metrics: Optional[dict], last: bool = False,
            stopping: bool = False) -> Tuple[bool, bool]:
    """Saves ``session.state`` at ``session.step`` (``last``: no step
    call follows); returns ``(saved, stop_requested_by_a_listener)``.

    A non-finite state is never saved: while the loop is ``stopping``
    (``end``, an exception, a stop already requested) it is skipped with an
    error log; else ``on_nonfinite`` says whether to raise."""
    step = session.step
    if finite is None:
      finite = bool(jax.device_get(cio.all_finite(session.state)))
    if not finite:
      if self._on_nonfinite == "raise" and not stopping:
        error = NonFiniteStateError(step, self.checkpoint_dir)
        leaf = cio.first_nonfinite_leaf(session.state)
        if leaf is not None:
          error.add_note(f"The first non-finite leaf of the state is {leaf}.")
        raise error
      log.error("Not saving the non-finite train state of step %d; the last "
                "checkpoint (step %s) is kept.", step, self.last_saved_step)
      return False, False
    for listener in self._listeners:
      listener.before_save(session, step)
    data = None if self._data is None else self._data[0]()
    self._open_writes.save(step, session.state,
                           hook_states=cio.hook_states(self._hooks),
                           data=data, metrics=metrics,
                           donated=session.donates_state and not last)
    stop = False
    for listener in self._listeners:
      stop = listener.after_save(session, step) is True or stop
    return True, stop

  def _close(self, exc: Optional[BaseException] = None) -> None:
    """Ends the session's writes (see ``CheckpointWrites.close``), then
    puts the signal handlers back and unlocks the directory."""
    try:
      if self._open:
        self._open = False
        self._open_writes.close(exc)
    finally:
      self._notice.uninstall()
      self._lock.release()
      self._coord = None

  def __repr__(self) -> str:
    period = "no periodic saves" if self._timer is None else repr(self._timer)
    return f"CheckpointSaverHook({self.checkpoint_dir!r}, {period})"
