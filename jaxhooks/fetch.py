"""Reading what hooks ask for: one ``jax.device_get`` per step, or none.

``RunArgs.fetches`` is a nested structure whose leaves are output names,
:data:`~jaxhooks.GLOBAL_STEP`, or functions of ``(state, outputs)``. The
runner resolves every hook's leaves to device arrays, reads all of them in a
single ``jax.device_get``, and hands each hook its own structure back with
host values at the leaves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, List, Optional, Sequence

import jax
import numpy as np

from jaxhooks.hook import GLOBAL_STEP

__all__ = ["default_step_fn", "step_reader", "resolve_fetches",
           "device_fetches", "read_step", "map_leaves"]


def _is_fetch_leaf(x: Any) -> bool:
  return isinstance(x, str) or x is GLOBAL_STEP or callable(x)


def map_leaves(fn: Callable[[Any], Any], tree: Any,
               is_leaf: Optional[Callable[[Any], bool]] = None) -> Any:
  """``jax.tree_util.tree_map(fn, tree)`` that lets ``fn``'s exceptions
  through as raised.

  ``tree_map`` calls ``fn`` inside a generator, where a ``StopIteration``
  becomes ``RuntimeError('generator raised StopIteration')`` (PEP 479); the
  user functions hooks call (fetch functions, final ops) go through here.

  Example:
    >>> map_leaves(lambda x: x + 1, {"a": 1, "b": (2, 3)})
    {'a': 2, 'b': (3, 4)}
    >>> map_leaves(lambda x: next(iter(())), [1])
    Traceback (most recent call last):
    ...
    StopIteration
  """
  leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=is_leaf)
  return jax.tree_util.tree_unflatten(treedef, [fn(x) for x in leaves])


def default_step_fn(state: Any) -> Any:
  """``state.step``, or ``state["step"]`` for a dict state."""
  if isinstance(state, Mapping):
    return state["step"]
  return state.step


def _described(state: Any) -> str:
  """What a state is, for errors: its type and keys or fields."""
  name = type(state).__name__
  if isinstance(state, Mapping):
    return f"a {name} with keys {sorted(map(str, state))}"
  fields = getattr(state, "_fields", None) or list(
      getattr(state, "__dataclass_fields__", ()))
  return f"a {name} with fields {list(fields)}" if fields else f"a {name}"


def step_reader(step_fn: Optional[Callable[[Any], Any]]
                ) -> Callable[[Any], Any]:
  """``step_fn`` (or :func:`default_step_fn`) raising, when it cannot read
  a state, a ``TypeError`` that names what it read and what the state has.

  Every read of the step (after ``begin``, of each new state in fetches
  and in the step's own program, at ``end``) goes through it, so a
  ``train_step`` that returns a state without its step gets this error.

  Example:
    >>> step_reader(None)({"w": 1.0})
    Traceback (most recent call last):
    ...
    TypeError: `state` has no step: `state['step']` raised KeyError: 'step'; the state is a dict with keys ['w']. `train_step` must return the state with its step, or pass `step_fn=` (a function returning the completed-update count of the state), e.g. `step_fn=lambda s: s['opt'].step` for a dict or Flax NNX state.
  """
  def read(state: Any) -> Any:
    try:
      return (step_fn or default_step_fn)(state)
    except (AttributeError, KeyError, TypeError, IndexError) as e:
      got = f"{type(e).__name__}: {e}; the state is {_described(state)}"
      if step_fn is not None:
        raise TypeError(f"`step_fn` failed on the state "
                        f"({type(state).__name__}): {got}.") from e
      where = ("`state['step']`" if isinstance(state, Mapping)
               else "`state.step`")
      raise TypeError(
          f"`state` has no step: {where} raised {got}. `train_step` must "
          "return the state with its step, or pass `step_fn=` (a function "
          "returning the completed-update count of the state), e.g. "
          "`step_fn=lambda s: s['opt'].step` for a dict or Flax NNX state."
      ) from e
  return read


def read_step(step_fn: Callable[[Any], Any], state: Any, *,
              custom: bool) -> Any:
  """Returns the step array of ``state`` (not yet on the host);
  ``step_fn`` is a :func:`step_reader`.

  Raises:
    TypeError: the state has no step, or the step is not an integer scalar.
  """
  step = step_fn(state)
  shape = np.shape(step)
  dtype = getattr(step, "dtype", np.asarray(step).dtype)
  if shape != () or not np.issubdtype(dtype, np.integer):
    what = "`step_fn(state)`" if custom else "`state.step`"
    raise TypeError(
        f"{what} must be an integer scalar, got dtype={dtype} shape={shape}.")
  return step


def output(outputs: Any, name: str, *, who: str = "A hook") -> Any:
  """``outputs[name]``, or an error that says what the step returned (and
  ``who`` fetched it).

  Example:
    >>> output({"loss": 0.5}, "loss")
    0.5
    >>> output({"loss": 0.5}, "acc")
    Traceback (most recent call last):
    ...
    ValueError: A hook fetches the output 'acc', which the step does not return; `outputs` has keys ['loss'].
  """
  if not isinstance(outputs, Mapping):
    kind = ("an array" if hasattr(outputs, "shape")
            else f"a {type(outputs).__name__}")
    raise TypeError(
        f"{who} fetches the output {name!r}, but the step's `outputs` is "
        f"{kind}, not a dict of named outputs.")
  try:
    return outputs[name]
  except KeyError:
    raise ValueError(
        f"{who} fetches the output {name!r}, which the step does not "
        f"return; `outputs` has keys {sorted(map(str, outputs))}.") from None


def _resolve_leaf(leaf: Any, state: Any, outputs: Any,
                  step_fn: Callable[[Any], Any]) -> Any:
  if leaf is GLOBAL_STEP:
    return step_fn(state)
  if isinstance(leaf, str):
    return output(outputs, leaf)
  return leaf(state, outputs)


def resolve_fetches(fetches: Sequence[Any], state: Any, outputs: Any,
                    step_fn: Callable[[Any], Any]) -> List[Any]:
  """Reads a list of fetch structures (``None`` entries stay ``None``).

  All device values are read with exactly one ``jax.device_get``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxhooks.hook import GLOBAL_STEP
    >>> state = {"step": jnp.array(3)}
    >>> resolve_fetches([None, {"l": "loss", "s": GLOBAL_STEP}], state,
    ...                 {"loss": jnp.array(0.5)}, default_step_fn)
    [None, {'l': array(0.5, dtype=float32), 's': array(3, dtype=int32)}]
  """
  return jax.device_get(device_fetches(fetches, state, outputs, step_fn))


def device_fetches(fetches: Sequence[Any], state: Any, outputs: Any,
                   step_fn: Callable[[Any], Any]) -> List[Any]:
  """Like :func:`resolve_fetches`, with device arrays at the leaves (no
  read): what a lagged delivery reads later."""
  return [
      None if f is None else map_leaves(
          lambda x: _resolve_leaf(x, state, outputs, step_fn), f,
          is_leaf=_is_fetch_leaf) for f in fetches
  ]


def wants_step(fetches: Any) -> bool:
  """True when a fetch structure holds :data:`GLOBAL_STEP`."""
  leaves = jax.tree_util.tree_leaves(fetches, is_leaf=_is_fetch_leaf)
  return any(x is GLOBAL_STEP for x in leaves)


def resolve_at_step(fetches: Any, state: Any, outputs: Any, step: int) -> Any:
  """Reads one fetch structure, with :data:`GLOBAL_STEP` read as ``step``.

  For hooks' ``end``: the host step ``session.step`` is the step of
  ``state`` (the runner checks it against the device), so no ``step_fn`` is
  needed, whatever the shape of the state.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxhooks.hook import GLOBAL_STEP
    >>> resolve_at_step({"s": GLOBAL_STEP, "l": "loss"}, (jnp.ones(2),),
    ...                 {"loss": jnp.array(0.5)}, 7)
    {'l': array(0.5, dtype=float32), 's': 7}
  """
  (values,) = resolve_fetches([fetches], state, outputs, lambda _: step)
  return values
