"""``MonitoredTrainingSession``: the TF-shaped driver around :func:`wrap`.

Example::

  with jh.MonitoredTrainingSession(train_step, state, checkpoint_dir="runs/x",
                                   hooks=[jh.StopAtStepHook(num_steps=1000)]
                                   ) as sess:
    while not sess.should_stop():
      sess.run(next(batches))   # StopIteration ends the session cleanly
  state = sess.state
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence

from jaxhooks.checkpoint import CheckpointSaverHook
from jaxhooks.coord import Coordinator
from jaxhooks.distributed import default_coordinator
from jaxhooks.errors import LifecycleError
from jaxhooks.hook import Hook
from jaxhooks.log_hooks import StepCounterHook
from jaxhooks.runner import HookedStep
from jaxhooks.summary_hook import SummarySaverHook

__all__ = ["MonitoredTrainingSession", "default_hooks", "summary_hooks",
           "DEFAULT_SAVE_CHECKPOINT_SECS"]

#: TensorFlow's checkpoint period when neither steps nor seconds are given.
DEFAULT_SAVE_CHECKPOINT_SECS = 600


def summary_hooks(*, summary_dir: Optional[str],
                  save_summaries_steps: Optional[int],
                  save_summaries_secs: Optional[float],
                  log_step_count_steps: Optional[int]) -> List[Hook]:
  """The summary part of the defaults, as TensorFlow's.

  - ``StepCounterHook(every_n_steps=log_step_count_steps)`` when it is > 0,
    writing ``global_step/sec`` to ``summary_dir`` when there is one.
  - With ``summary_dir``: ``SummarySaverHook`` writing every scalar output
    of the step every ``save_summaries_steps`` steps (or
    ``save_summaries_secs`` seconds; giving it replaces the default steps).
    Both hooks share one TensorBoard writer.
  """
  if save_summaries_secs is not None and save_summaries_steps == 100:
    save_summaries_steps = None  # TF: giving the seconds replaces the default
  hooks: List[Hook] = []
  writer = counter_dir = None
  if summary_dir is not None and (save_summaries_steps or
                                  save_summaries_secs):
    summary = SummarySaverHook(save_steps=save_summaries_steps or None,
                               save_secs=save_summaries_secs or None,
                               output_dir=summary_dir)
    writer = summary.writer
    hooks.append(summary)
  elif summary_dir is not None and log_step_count_steps:
    counter_dir = summary_dir   # the hook opens and closes its own writer
  if log_step_count_steps:
    hooks.insert(0, StepCounterHook(every_n_steps=log_step_count_steps,
                                    output_dir=counter_dir, writer=writer))
  return hooks


def default_hooks(*, checkpoint_dir: Optional[str],
                  save_checkpoint_steps: Optional[int],
                  save_checkpoint_secs: Optional[float],
                  save_summaries_steps: Optional[int],
                  save_summaries_secs: Optional[float],
                  log_step_count_steps: Optional[int],
                  summary_dir: Optional[str] = None) -> List[Hook]:
  """The hooks ``MonitoredTrainingSession`` adds, as TF does.

  - The summary hooks of :func:`summary_hooks`, writing to ``summary_dir``
    (``checkpoint_dir`` by default); they write on process 0 only.
  - With ``checkpoint_dir``: a ``CheckpointSaverHook(checkpoint_dir)``, last,
    on every process (Orbax saves need all of them). Its period follows TF:
    ``save_checkpoint_steps`` if given, else ``save_checkpoint_secs``, and
    600 seconds when neither is given. A period of 0 turns periodic saves
    off; the hook still restores the latest checkpoint, saves on preemption
    and saves the final state at the end.
  """
  hooks = summary_hooks(
      summary_dir=summary_dir if summary_dir is not None else checkpoint_dir,
      save_summaries_steps=save_summaries_steps,
      save_summaries_secs=save_summaries_secs,
      log_step_count_steps=log_step_count_steps)
  if checkpoint_dir is not None:
    hooks.append(_checkpoint_hook(checkpoint_dir, save_checkpoint_steps,
                                  save_checkpoint_secs))
  return hooks


def _checkpoint_hook(checkpoint_dir: str, steps: Optional[int],
                     secs: Optional[float]) -> CheckpointSaverHook:
  if steps is not None and secs is not None:
    raise ValueError(
        "At most one of `save_checkpoint_steps` and `save_checkpoint_secs` "
        f"may be given, got {steps!r} and {secs!r}.")
  if steps is None and secs is None:
    secs = DEFAULT_SAVE_CHECKPOINT_SECS
  return CheckpointSaverHook(checkpoint_dir, save_steps=steps or None,
                             save_secs=secs or None)


class MonitoredTrainingSession:
  """A context manager that runs a train step with hooks, TensorFlow style.

  Args:
    train_step: a jitted ``(state, batch) -> (state, outputs)``.
    state: the initial train state (replaced by the latest checkpoint in
      ``checkpoint_dir`` when there is one).
    checkpoint_dir: where checkpoints (and, by default, summaries) go.
    hooks: hooks run on every process.
    chief_only_hooks: hooks run on process 0 only.
    step_fn: reads the step of a state (see :func:`jaxhooks.wrap`).
    save_checkpoint_steps, save_checkpoint_secs: checkpoint period (at most
      one; 600 seconds when neither is given, as in TensorFlow; 0: no
      periodic saves, only the final one).
    save_summaries_steps, save_summaries_secs: summary period.
    log_step_count_steps: ``StepCounterHook`` period (0 or None: none).
    summary_dir: where TensorBoard summaries go (``checkpoint_dir`` when
      ``None``); see :func:`summary_hooks`.
    coord: the stop coordinator (as :func:`jaxhooks.wrap` chooses it by
      default).
    steps_per_call, batch_fn, lag_fetches: as in :func:`jaxhooks.wrap`;
      with ``steps_per_call`` each ``run`` takes a batch stacked on a
      leading axis of ``steps_next_call`` rows (or the ``batch_fn`` input).

  On leaving the ``with`` block normally, or through ``StopIteration`` from
  the data, every hook's ``end`` runs, and an exception a hook gave to
  ``coord.request_stop(exception)`` is raised then; any other exception
  leaving the block propagates with ``end`` skipped and ``on_exception``
  called. A ``run`` whose step or batch raises (a bad batch) fails alone:
  catch the error inside the block and the session goes on.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import jaxhooks as jh
    >>> train_step = jax.jit(lambda s, b: ({"step": s["step"] + 1}, {"b": b}))
    >>> batches = iter(range(3))
    >>> with jh.MonitoredTrainingSession(
    ...     train_step, {"step": jnp.array(0)}, log_step_count_steps=0,
    ...     hooks=[jh.StopAtStepHook(last_step=10)]) as sess:
    ...   while not sess.should_stop():
    ...     _ = sess.run(next(batches))
    >>> int(sess.state["step"])
    3
  """

  def __init__(self, train_step: Callable, state: Any, *,
               checkpoint_dir: Optional[str] = None,
               hooks: Sequence[Hook] = (),
               chief_only_hooks: Sequence[Hook] = (),
               step_fn: Optional[Callable[[Any], Any]] = None,
               save_checkpoint_steps: Optional[int] = None,
               save_checkpoint_secs: Optional[float] = None,
               save_summaries_steps: Optional[int] = 100,
               save_summaries_secs: Optional[float] = None,
               log_step_count_steps: Optional[int] = 100,
               summary_dir: Optional[str] = None,
               coord: Optional[Coordinator] = None,
               steps_per_call: int = 1,
               batch_fn: Optional[Callable[[Any, Any], Any]] = None,
               lag_fetches: bool = False):
    coord = coord or default_coordinator()
    all_hooks = list(hooks)
    if coord.is_primary:
      all_hooks += list(chief_only_hooks)
    # Default hooks go on every process: checkpoint saves need all of them,
    # and the writing hooks are `primary_only`.
    all_hooks += default_hooks(
        checkpoint_dir=checkpoint_dir,
        save_checkpoint_steps=save_checkpoint_steps,
        save_checkpoint_secs=save_checkpoint_secs,
        save_summaries_steps=save_summaries_steps,
        save_summaries_secs=save_summaries_secs,
        log_step_count_steps=log_step_count_steps,
        summary_dir=summary_dir)
    self._step = HookedStep(train_step, all_hooks, step_fn=step_fn,
                            coord=coord, steps_per_call=steps_per_call,
                            batch_fn=batch_fn, lag_fetches=lag_fetches)
    self._initial_state = state
    self._state = state
    self._outputs = None
    self._entered = False

  @property
  def hooks(self):
    return self._step.hooks

  @property
  def state(self) -> Any:
    """The current train state (the final one after the ``with`` block)."""
    return self._state

  @property
  def global_step(self) -> int:
    return self._step.step

  @property
  def steps_next_call(self) -> int:
    """How many steps the next ``run`` runs (see ``steps_per_call``)."""
    return self._step.steps_next_call

  def __enter__(self) -> "MonitoredTrainingSession":
    if self._entered:
      raise LifecycleError("A MonitoredTrainingSession can be entered once.")
    self._entered = True
    self._state = self._step.begin(self._initial_state)
    self._initial_state = None
    return self

  def should_stop(self) -> bool:
    return self._step.should_stop

  def run(self, batch: Any = None) -> Any:
    """Runs one step on ``batch``; returns the step's outputs."""
    if not self._entered:
      raise LifecycleError(
          "MonitoredTrainingSession.run was called outside its `with` block.")
    self._state, self._outputs, _ = self._step(self._state, batch)
    return self._outputs

  def close(self) -> None:
    """Ends the session: every hook's ``end`` with the final state."""
    self._state = self._step.end(self._state)

  def __exit__(self, exc_type, exc, tb) -> bool:
    if exc_type is None or issubclass(exc_type, StopIteration):
      self.close()
      return True  # StopIteration from the data ends the session cleanly
    self._step.abort(exc)
    return False
