"""Restoring a jaxhooks checkpoint into the structure of a given state.

The train state comes back with the structure, dtypes and shardings of the
state handed to ``begin``; a saved tree of another structure is refused with
the leaves that differ named, and an unreadable step directory with the
advice to delete it (the previous checkpoint is then the latest).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxhooks.checkpoint_io import DATA, HOOKS, STATE, data_filename, from_json
from jaxhooks.errors import CheckpointError, CheckpointMismatchError

__all__ = ["restore_checkpoint", "structure_diff"]

log = logging.getLogger("jaxhooks")


def _path_str(path: Tuple[Any, ...]) -> Tuple[str, ...]:
  out = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        out.append(str(getattr(k, attr)))
        break
    else:
      out.append(str(k))
  return tuple(out)


def _leaves_by_path(tree: Any) -> Dict[Tuple[str, ...], Any]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {_path_str(p): leaf for p, leaf in flat}


def _stored_shape(leaf: Any) -> Tuple[int, ...]:
  """The shape a leaf of the state has on disk: a PRNG key array (Flax
  NNX ``Rngs``, ``jax.random.key``) is stored as its key data."""
  dtype = getattr(leaf, "dtype", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    return tuple(jax.eval_shape(jax.random.key_data, leaf).shape)
  return tuple(np.shape(leaf))


def structure_diff(state: Any, saved_tree: Any) -> List[str]:
  """Differences between a state and the metadata tree of a saved one.

  Example:
    >>> import numpy as np
    >>> structure_diff({"w": np.ones(2), "b": np.ones(1)},
    ...                {"w": np.ones(3), "c": np.ones(1)})
    ['missing in the checkpoint: b', 'only in the checkpoint: c', 'w: shape (2,) in the state, (3,) in the checkpoint']
  """
  want, have = _leaves_by_path(state), _leaves_by_path(saved_tree)
  diffs = [f"missing in the checkpoint: {'.'.join(p)}"
           for p in want if p not in have]
  diffs += [f"only in the checkpoint: {'.'.join(p)}"
            for p in have if p not in want]
  for p, leaf in want.items():
    if p in have:
      got = getattr(have[p], "shape", None)
      got = tuple(np.shape(have[p]) if got is None else got)
      if _stored_shape(leaf) != got:
        diffs.append(f"{'.'.join(p)}: shape {_stored_shape(leaf)} in the "
                     f"state, {got} in the checkpoint")
  return diffs


def _abstract(leaf: Any) -> Any:
  if isinstance(leaf, jax.Array):
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
  return leaf


def restore_checkpoint(manager: ocp.CheckpointManager, step: int, state: Any,
                       *, with_data: bool) -> Tuple[Any, Dict[str, Any], Any]:
  """Restores ``(state, hook_states, data_state)`` of ``step``.

  The train state comes back with the structure, dtypes and shardings of
  ``state``.

  Raises:
    CheckpointMismatchError: the saved tree differs from ``state``.
    CheckpointError: the step directory cannot be read.
  """
  where = f"{manager.directory / str(step)}"
  try:
    metadata = manager.item_metadata(step)
    saved_tree = metadata[STATE]
    saved_tree = getattr(saved_tree, "tree", saved_tree)
    if saved_tree is None:
      raise FileNotFoundError(f"no train state item in {where}")
  except Exception as e:
    raise CheckpointError(
        f"The checkpoint of step {step} in {where!r} is corrupted or "
        f"incomplete ({type(e).__name__}: {e}). Delete that directory to "
        "resume from the previous checkpoint "
        f"(steps on disk: {list(manager.all_steps())}).") from e
  diffs = structure_diff(state, saved_tree)
  if diffs:
    shown = "; ".join(diffs[:8]) + ("; ..." if len(diffs) > 8 else "")
    raise CheckpointMismatchError(
        f"The checkpoint of step {step} in {where!r} does not match the "
        f"structure of `state`: {shown}.")
  data_dir = manager.directory / str(step) / DATA
  data_file = data_dir / data_filename(jax.process_index())
  has_data = with_data and DATA in metadata and data_file.exists()
  if with_data and not has_data and data_dir.exists():
    log.warning("The checkpoint of step %d holds no data position of process "
                "%d (no %s); the data iterator is not restored.", step,
                jax.process_index(), data_file)
  args = {STATE: ocp.args.StandardRestore(
      jax.tree_util.tree_map(_abstract, state)),
          HOOKS: ocp.args.JsonRestore()}
  if has_data:
    args[DATA] = ocp.args.JsonRestore()
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**args))
  except Exception as e:
    raise CheckpointError(
        f"The checkpoint of step {step} in {where!r} could not be read "
        f"({type(e).__name__}: {e}). It is corrupted: delete that directory "
        "to resume from the previous checkpoint "
        f"(steps on disk: {list(manager.all_steps())}).") from e
  data = from_json(restored[DATA]) if has_data else None
  return restored[STATE], dict(restored[HOOKS] or {}), data
