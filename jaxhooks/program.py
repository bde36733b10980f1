"""The device program of a hooked step.

With no device monitors and one step per call, the runner calls the user's
jitted ``train_step`` as it is: jaxhooks adds no program of its own. Else it
compiles one program around it::

  program(state, batch, monitors, n):        # one dispatch
    for i in range(n):                        # n <= steps_per_call, traced
      b = batch_fn(batch, step(state))  or  batch[i]  (stacked batches)
      state, outputs = train_step(state, b)
      monitors = [m.update(v, step(state), state, outputs) ...]
    return state, outputs, monitors           # outputs of the last step

The number of steps ``n`` is an argument of the program, not a constant in
it, and a stacked batch shorter than ``steps_per_call`` is padded to it, so
a call cut short (to end at a trigger step) compiles nothing new.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxhooks.hook import DeviceMonitor
from jaxhooks.jax_private import jit_donate_argnums
from jaxhooks.nnx_state import LiveObjects

__all__ = ["StepProgram", "donates_state", "merge_feeds"]


def donates_state(train_step: Any) -> bool:
  """True when ``train_step`` is a ``jax.jit`` function that donates its
  first argument (the state); the runner's own program then does too."""
  return 0 in (jit_donate_argnums(train_step) or ())


def check_step_result(result: Any) -> None:
  """Raises ``TypeError`` unless ``result`` is ``(state, outputs)``."""
  if not isinstance(result, tuple) or len(result) != 2:
    got = (f"a tuple of {len(result)}" if isinstance(result, tuple)
           else type(result).__name__)
    raise TypeError(
        "`train_step` must return `(state, outputs)`, got " + got + ".")


def merge_feeds(batch: Any, feeds: List[Any]) -> Any:
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


def _leading(batch: Any) -> List[int]:
  return [np.shape(x)[0] if np.ndim(x) else -1
          for x in jax.tree_util.tree_leaves(batch)]


def _pad(x: Any, rows: int) -> Any:
  pad = [(0, rows - np.shape(x)[0])] + [(0, 0)] * (np.ndim(x) - 1)
  if isinstance(x, np.ndarray):
    return np.pad(x, pad)
  return jnp.pad(x, pad)


class StepProgram:
  """Runs ``n`` steps of ``train_step`` per dispatch with device monitors.

  Args:
    train_step: the user's ``(state, batch) -> (state, outputs)``.
    step_fn: reads the device step of a state.
    monitors: the hooks' :class:`~jaxhooks.DeviceMonitor` values.
    steps_per_call: the most steps one call runs (``K``).
    batch_fn: ``batch_fn(batch, step) -> batch of that step``, traced inside
      the program (``step`` is the device step before the update); without
      it a call with ``K > 1`` takes a batch stacked on a leading axis of
      exactly ``n`` rows.
    donate_state: donate the state argument (as a donating ``train_step``).
    live: the Flax NNX objects of the state (``jaxhooks.nnx_state``): each
      call writes the new values into the objects it was given and returns
      them as the state.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> step = jax.jit(lambda s, b: ({"step": s["step"] + 1,
    ...                               "w": s["w"] + b}, {"w": s["w"] + b}))
    >>> program = StepProgram(step, step_fn=lambda s: s["step"], monitors=(),
    ...                       steps_per_call=4)
    >>> state = {"step": jnp.array(0), "w": jnp.array(0.0)}
    >>> state, outputs, _ = program(state, jnp.array([1.0, 2.0, 3.0]), (), 3)
    >>> int(state["step"]), float(outputs["w"])
    (3, 6.0)
  """

  def __init__(self, train_step: Callable[[Any, Any], Tuple[Any, Any]], *,
               step_fn: Callable[[Any], Any],
               monitors: Sequence[DeviceMonitor], steps_per_call: int = 1,
               batch_fn: Optional[Callable[[Any, Any], Any]] = None,
               donate_state: bool = False,
               live: Optional[LiveObjects] = None):
    self._train_step = train_step
    self._step_fn = step_fn
    self._monitors = tuple(monitors)
    self.steps_per_call = int(steps_per_call)
    self._batch_fn = batch_fn
    #: More than one step per call, or a batch function: the program takes
    #: the step count ``n``. Else it is ``jitted(state, batch, values)``.
    self.fused = self.steps_per_call > 1 or batch_fn is not None
    donate = (0,) if donate_state else ()
    self.jitted: Callable[..., Tuple[Any, Any, Any]] = jax.jit(
        self._run_n if self.fused else self._run_1, donate_argnums=donate)
    if live is not None:
      self.jitted = live.updating(self.jitted)

  def init_monitors(self) -> tuple:
    return tuple(m.init() for m in self._monitors)

  def _one(self, state: Any, batch: Any, values: tuple) -> Tuple[Any, ...]:
    result = self._train_step(state, batch)
    check_step_result(result)
    state, outputs = result
    if self._monitors:
      step = self._step_fn(state)
      values = tuple(m.update(v, step, state, outputs)
                     for m, v in zip(self._monitors, values))
    return state, outputs, values

  def _run_1(self, state: Any, batch: Any, values: tuple):
    return self._one(state, batch, values)

  def _run_n(self, state: Any, batch: Any, values: tuple, n: Any):
    def batch_at(i, state):
      if self._batch_fn is not None:
        return self._batch_fn(batch, self._step_fn(state))
      return jax.tree_util.tree_map(
          lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False), batch)

    # The outputs' structure, for the loop's carry (the loop runs >= once).
    shapes = jax.eval_shape(lambda s: self._train_step(s, batch_at(0, s)),
                            state)
    check_step_result(shapes)
    outputs = jax.tree_util.tree_map(
        lambda s: jnp.zeros(s.shape, s.dtype), shapes[1])

    def body(i, carry):
      state, _, values = carry
      return self._one(state, batch_at(i, state), values)

    return jax.lax.fori_loop(0, n, body, (state, outputs, values))

  def check_batch(self, batch: Any, n: int) -> Any:
    """A stacked batch of ``n`` rows, padded to ``steps_per_call`` rows.

    Raises:
      TypeError: the leading axis of some leaf is not ``n``.
    """
    if self._batch_fn is not None or self.steps_per_call == 1:
      return batch
    rows = _leading(batch)
    if not rows or any(r != n for r in rows):
      raise TypeError(
          f"With `steps_per_call={self.steps_per_call}` each call takes a "
          f"batch stacked on a leading axis of exactly {n} rows (the "
          "hooked step's `steps_next_call`), or pass `batch_fn`; got "
          f"`batch` with leading sizes {rows}.")
    if n == self.steps_per_call:
      return batch
    return jax.tree_util.tree_map(lambda x: _pad(x, self.steps_per_call),
                                  batch)

  def __call__(self, state: Any, batch: Any, values: tuple,
               n: int) -> Tuple[Any, Any, tuple]:
    if self.fused:
      return self.jitted(state, batch, values, np.int32(n))
    return self.jitted(state, batch, values)   # every argument costs
