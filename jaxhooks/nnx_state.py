"""Flax NNX objects in the train state stay the user's live objects.

In the Flax NNX style, the model, optimizer and metrics are objects that an
``nnx.jit`` step updates in place: the loop and its evaluation keep using
the same objects. jaxhooks runs the user's step as it is where it can, and
then nothing changes. Two things make new objects instead:

- jaxhooks' own program (device monitors, ``steps_per_call > 1``,
  ``batch_fn``) is a ``jax.jit`` function, which flattens the objects into
  their arrays and returns new objects;
- a restored checkpoint comes back as new objects.

``bind(state)`` decides once, at ``begin``, whether the state holds NNX
objects (never for a state without them: the per-step path of plain states
is untouched). When it does, :meth:`LiveObjects.adopt` writes the new
values into the user's objects with ``nnx.update`` and hands those objects
back::

  begin:        state = live.adopt(given, restored)
  program call: new = program(state, ...)       # may donate state's arrays
                state = live.adopt(state, new)  # the user's objects, now
                                                # holding new's arrays

Flax is not imported here unless the user has imported it.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Optional, Tuple

import jax

__all__ = ["LiveObjects", "bind"]


def _nnx() -> Any:
  """``flax.nnx`` when the user has imported it, else ``None``."""
  return sys.modules.get("flax.nnx")


def bind(state: Any, *,
         program: Callable[[], bool]) -> Optional["LiveObjects"]:
  """A :class:`LiveObjects` when ``state`` holds Flax NNX objects, else
  ``None`` (always ``None`` when ``flax.nnx`` was never imported).

  ``program()``: whether jaxhooks will run the step inside a program of its
  own (asked only of a state with NNX objects).

  Raises:
    ValueError: with a program, two places of ``state`` hold one NNX
      ``Variable`` (the program would see two arrays, and an update of one
      would not reach the other).

  Example:
    >>> import jax.numpy as jnp
    >>> bind({"w": jnp.ones(2), "step": jnp.array(0)},
    ...      program=lambda: True) is None
    True
  """
  nnx = _nnx()
  if nnx is None:
    return None
  kinds = (nnx.Pytree, nnx.Variable)
  leaves = jax.tree_util.tree_leaves(state, is_leaf=lambda x:
                                     isinstance(x, kinds))
  if not any(isinstance(x, kinds) for x in leaves):
    return None
  if program():
    _check_unshared(nnx, state)
  return LiveObjects(nnx)


def _check_unshared(nnx: Any, state: Any) -> None:
  flat, _ = jax.tree_util.tree_flatten_with_path(
      state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  seen: dict = {}
  for path, leaf in flat:
    if isinstance(leaf, nnx.Variable):
      first = seen.setdefault(id(leaf), path)
      if first is not path:
        raise ValueError(
            f"`state` holds one Flax NNX Variable in two places "
            f"({_path(first)} is {_path(path)}), which jaxhooks' program "
            "(device monitors, `steps_per_call > 1` or `batch_fn`) would "
            "update as two separate arrays. Keep each Variable in one place "
            "of the state, or let jaxhooks call the step as it is (no "
            "NanTensorHook, `steps_per_call=1`, no `batch_fn`).")


def _path(path: Tuple[Any, ...]) -> str:
  return "state" + jax.tree_util.keystr(path)


class LiveObjects:
  """Keeps the NNX objects of a train state the live ones.

  Build it with :func:`bind`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> live = bind((model,), program=lambda: True)
    >>> new = jax.jit(lambda s: jax.tree.map(lambda x: x + 1, s))((model,))
    >>> new[0] is model
    False
    >>> state = live.adopt((model,), new)
    >>> state[0] is model, bool((model.bias[...] == 1).all())
    (True, True)
  """

  def __init__(self, nnx: Any):
    self._nnx = nnx
    self._kinds = (nnx.Pytree, nnx.Variable)

  def _is_object(self, x: Any) -> bool:
    return isinstance(x, self._kinds)

  def adopt(self, old: Any, new: Any) -> Any:
    """Writes the values of ``new`` into the NNX objects of ``old`` (a
    tree of the same structure) and returns ``old`` with them: its objects
    hold ``new``'s arrays; any array outside an object is ``new``'s."""
    if new is old:
      return old
    olds, treedef = jax.tree_util.tree_flatten(old, is_leaf=self._is_object)
    try:
      # jaxlib's stubs do not declare PyTreeDef.flatten_up_to (it exists).
      news = treedef.flatten_up_to(new)  # type: ignore[attr-defined]
    except (TypeError, ValueError) as e:
      raise TypeError(
          "`train_step` must return a state of the structure of the one it "
          f"was given (its NNX objects at the same places): {e}") from None
    out, rebuilt = [], False
    for o, n in zip(olds, news):
      if not self._is_object(o):
        out.append(n)
        rebuilt = rebuilt or n is not o
      else:
        if n is not o:
          self._write(o, n)
        out.append(o)
    return jax.tree_util.tree_unflatten(treedef, out) if rebuilt else old

  def _write(self, old: Any, new: Any) -> None:
    """Writes the values of ``new`` into the NNX object ``old`` (a Pytree or
    a Variable) of the same structure: each Variable takes the new array;
    with anything else in the object (an array outside a Variable, an array
    ref), ``nnx.update`` does it."""
    variable = self._nnx.Variable
    olds, treedef = jax.tree_util.tree_flatten(
        old, is_leaf=lambda x: isinstance(x, variable))
    # jaxlib's stubs do not declare PyTreeDef.flatten_up_to (it exists).
    news = treedef.flatten_up_to(new)  # type: ignore[attr-defined]
    if all(isinstance(o, variable) and isinstance(o.get_raw_value(), jax.Array)
           and isinstance(n, variable) for o, n in zip(olds, news)):
      for o, n in zip(olds, news):
        o.set_raw_value(n.get_raw_value())
    else:
      self._nnx.update(old, self._nnx.state(new))

  def updating(self, program: Callable[..., Tuple[Any, Any, Any]]
               ) -> Callable[..., Tuple[Any, Any, Any]]:
    """``program(state, ...) -> (state, outputs, values)`` returning the
    user's objects, updated, as its state."""
    adopt = self.adopt

    def call(state: Any, *args: Any) -> Tuple[Any, Any, Any]:
      new_state, outputs, values = program(state, *args)
      return adopt(state, new_state), outputs, values

    return call
