"""``wrap``: the entry point that puts hooks around a train step."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple

from jaxhooks.coord import Coordinator
from jaxhooks.hook import Hook
from jaxhooks.runner import HookedStep

__all__ = ["wrap"]


def wrap(train_step: Callable[[Any, Any], Tuple[Any, Any]],
         hooks: Sequence[Hook] = (), *,
         step_fn: Optional[Callable[[Any], Any]] = None,
         coord: Optional[Coordinator] = None,
         steps_per_call: int = 1,
         batch_fn: Optional[Callable[[Any, Any], Any]] = None,
         lag_fetches: bool = False,
         donate_state: Optional[bool] = None) -> HookedStep:
  """Wraps a train step ``(state, batch) -> (state, outputs)`` with hooks.

  Args:
    train_step: usually a ``jax.jit`` function. Called as is (jaxhooks adds
      no program) unless a hook keeps device monitors (``NanTensorHook``) or
      ``steps_per_call > 1``: then one program of jaxhooks runs it. Flax
      NNX objects in the state (model, optimizer, metrics that an
      ``nnx.jit`` step updates in place) stay the live ones either way:
      after each call and after a restore they hold the returned state's
      values (see ``jaxhooks.nnx_state``).
    hooks: the hooks, called in this order.
    step_fn: returns the completed-update count of a state; by default
      ``state.step`` (or ``state["step"]``).
    coord: the stop coordinator; by default a ``DistributedCoordinator``
      in a multi-process job, else a single-process ``Coordinator``.
    steps_per_call: run up to this many steps per call in one dispatch (a
      ``fori_loop`` on the device). Each call is cut to end exactly at the
      next step some hook acts on; ``steps_next_call`` says how many steps
      the next call runs. Each call's batch is then stacked on a leading
      axis of that many rows, unless ``batch_fn`` is given.
    batch_fn: ``batch_fn(batch, step) -> batch``, traced on the device for
      each step (``step``: the completed steps before it), e.g. a slice of
      a device-resident data set passed as the call's ``batch``.
    lag_fetches: hand the values that hooks with
      ``accepts_lagged_fetches`` fetch at step N to their ``after_run``
      while the next call runs, so the loop never waits for them. Off when
      the state is or may be donated (held values may be leaves of it):
      a step that jaxhooks calls as it is, and that is not a ``jax.jit``
      function, may donate.
    donate_state: donate the state to jaxhooks' program (there is one with
      device monitors, ``steps_per_call > 1`` or ``batch_fn``); by default,
      as ``train_step`` does (``jax.jit(..., donate_argnums=0)``). A step
      called as it is donates as it does, whatever this says.

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

    Five steps per dispatch, cut to stop exactly at step 12:

    >>> step = jh.wrap(train_step, hooks=[jh.StopAtStepHook(last_step=12)],
    ...                steps_per_call=5)
    >>> state = step.begin({"w": jnp.ones(2), "step": jnp.array(0)})
    >>> calls = []
    >>> while not step.should_stop:
    ...   calls.append(step.steps_next_call)
    ...   state, _, _ = step(state, jnp.ones((calls[-1], 2)))
    >>> calls, int(step.end(state)["step"])
    ([5, 5, 2], 12)
  """
  return HookedStep(train_step, hooks, step_fn=step_fn, coord=coord,
                    steps_per_call=steps_per_call, batch_fn=batch_fn,
                    lag_fetches=lag_fetches, donate_state=donate_state)
