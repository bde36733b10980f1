"""Restoring a jaxhooks checkpoint into the structure of a given state.

The train state comes back with the structure, dtypes and shardings of the
state handed to ``begin``. Before reading any array, the saved tree is
compared with that state: paths (empty containers and ``None`` included),
shapes and dtypes (PRNG key arrays as the key data Orbax stores); a
difference is a ``CheckpointMismatchError`` naming the leaves. Saved values
of another dtype are cast only when asked (``cast_dtypes``).

A checkpoint is called corrupted only when it cannot be read: its metadata
is unreadable, or a restore fails and a restore of the saved tree as it is
fails too. Only then does the error advise deleting the step directory
(the previous checkpoint is then the latest).
"""

from __future__ import annotations

import logging
import re
from typing import Any, Dict, List, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jaxhooks.checkpoint_io import DATA, HOOKS, STATE, data_filename, from_json
from jaxhooks.errors import CheckpointError, CheckpointMismatchError

__all__ = ["restore_checkpoint", "structure_diff", "foreign_checkpoints",
           "check_foreign"]

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


def _is_empty_node(x: Any) -> bool:
  """``None`` or a pytree node without children (an empty container, the
  empty state object of a Flax NNX module): no leaf, but part of the
  structure Orbax saves and checks on restore."""
  if x is None:
    return True
  if isinstance(x, (jax.Array, np.ndarray, np.generic)):
    return False
  try:
    children, _ = jax.tree_util.flatten_one_level(x)
  except ValueError:   # a leaf
    return False
  return not list(children)


def _leaves_by_path(tree: Any) -> Dict[Tuple[str, ...], Any]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_empty_node)
  return {_path_str(p): leaf for p, leaf in flat}


def _stored(leaf: Any) -> Tuple[Tuple[int, ...], Any]:
  """``(shape, dtype)`` of a state leaf as Orbax stores it: a PRNG key
  array as its key data (``jax.random.key_data``); ``dtype`` is ``None``
  for a Python scalar."""
  dtype = getattr(leaf, "dtype", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype,
                                                 jax.dtypes.prng_key):
    data = jax.eval_shape(jax.random.key_data, leaf)
    return tuple(data.shape), np.dtype(data.dtype)
  shape = getattr(leaf, "shape", None)
  shape = tuple(np.shape(leaf) if shape is None else shape)
  return shape, None if dtype is None else np.dtype(dtype)


def _leaf_diff(name: str, leaf: Any, saved: Any, *, dtypes: bool
               ) -> List[str]:
  if _is_empty_node(leaf) or _is_empty_node(saved):
    if _is_empty_node(leaf) and _is_empty_node(saved):
      return []
    def what(x):
      return repr(x) if _is_empty_node(x) else "an array"
    return [f"{name}: {what(leaf)} in the state, {what(saved)} in the "
            "checkpoint"]
  (shape, dtype), (got, got_dtype) = _stored(leaf), _stored(saved)
  diffs = []
  if shape != got:
    diffs.append(f"{name}: shape {shape} in the state, {got} in the "
                 "checkpoint")
  if (dtypes and dtype is not None and got_dtype is not None
      and dtype != got_dtype):
    diffs.append(f"{name}: dtype {dtype} in the state, {got_dtype} in the "
                 "checkpoint")
  return diffs


def structure_diff(state: Any, saved_tree: Any, *,
                   dtypes: bool = True) -> List[str]:
  """Differences between a state and the metadata tree of a saved one:
  paths (empty containers and ``None`` included), shapes and, with
  ``dtypes``, dtypes. A PRNG key array compares as its key data, which is
  what Orbax stores.

  Example:
    >>> import numpy as np
    >>> structure_diff({"w": np.ones(2), "b": np.ones(1), "e": {}},
    ...                {"w": np.ones(3), "c": np.ones(1, np.int32)})
    ['missing in the checkpoint: b', 'missing in the checkpoint: e', 'only in the checkpoint: c', 'w: shape (2,) in the state, (3,) in the checkpoint']
    >>> structure_diff({"w": np.ones(2, np.int32), "n": None},
    ...                {"w": np.ones(2), "n": {}})
    ['w: dtype int32 in the state, float64 in the checkpoint']
  """
  want, have = _leaves_by_path(state), _leaves_by_path(saved_tree)
  diffs = [f"missing in the checkpoint: {'.'.join(p)}"
           for p in want if p not in have]
  diffs += [f"only in the checkpoint: {'.'.join(p)}"
            for p in have if p not in want]
  for p, leaf in want.items():
    if p in have:
      diffs += _leaf_diff(".".join(p), leaf, have[p], dtypes=dtypes)
  return diffs


def _abstract(leaf: Any) -> Any:
  if isinstance(leaf, jax.Array):
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
  return leaf


def restore_checkpoint(manager: ocp.CheckpointManager, step: int, state: Any,
                       *, with_data: bool, cast_dtypes: bool = False
                       ) -> Tuple[Any, Dict[str, Any], Any]:
  """Restores ``(state, hook_states, data_state)`` of ``step``.

  The train state comes back with the structure, dtypes and shardings of
  ``state``; with ``cast_dtypes``, saved values of another dtype are cast
  to the state's.

  Raises:
    CheckpointMismatchError: the saved tree differs from ``state``.
    CheckpointError: the step directory cannot be read (corrupted).
  """
  where = f"{manager.directory / str(step)}"
  try:
    metadata = manager.item_metadata(step)
    saved_tree = metadata[STATE]
    saved_tree = getattr(saved_tree, "tree", saved_tree)
    if saved_tree is None:
      raise FileNotFoundError(f"no train state item in {where}")
  except Exception as e:
    raise _corrupted(manager, step, where, "its metadata cannot be read",
                     e) from e
  diffs = structure_diff(state, saved_tree, dtypes=not cast_dtypes)
  if diffs:
    shown = "; ".join(diffs[:8]) + ("; ..." if len(diffs) > 8 else "")
    cast = ("; pass `restore_dtypes='cast'` to cast the saved values"
            if any(": dtype " in d for d in diffs) else "")
    raise CheckpointMismatchError(
        f"The checkpoint of step {step} in {where!r} does not match the "
        f"structure of `state`: {shown}{cast}.")
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
    if not _readable(manager, step):
      raise _corrupted(manager, step, where, "its files cannot be read",
                       e) from e
    raise CheckpointMismatchError(
        f"The checkpoint of step {step} in {where!r} is readable but could "
        f"not be restored into `state` ({type(e).__name__}: {e}).") from e
  data = from_json(restored[DATA]) if has_data else None
  return restored[STATE], dict(restored[HOOKS] or {}), data


def _readable(manager: ocp.CheckpointManager, step: int) -> bool:
  """Whether the saved train state and hook states of ``step`` restore as
  they were saved (no target): the test of a corrupted checkpoint, run
  only after a restore into the state failed."""
  try:
    manager.restore(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardRestore(), HOOKS: ocp.args.JsonRestore()}))
  except Exception:  # any failure to read the files is the answer
    return False
  return True


def _corrupted(manager: ocp.CheckpointManager, step: int, where: str,
               how: str, e: Exception) -> CheckpointError:
  return CheckpointError(
      f"The checkpoint of step {step} in {where!r} is corrupted: {how} "
      f"({type(e).__name__}: {e}). Delete that directory to resume from the "
      f"previous checkpoint (steps on disk: {list(manager.all_steps())}).")


# Names of checkpoints written by other tools: Flax's ``checkpoint_220``,
# TensorFlow's ``model.ckpt-1000.index`` and ``checkpoint``, ``step_100``.
_FOREIGN_NAME = re.compile(r"(?i)ckpt|checkpoint|^[a-z]+[-_]\d+$")
# jaxhooks' own partial writes (``12.orbax-checkpoint-tmp-...``).
_OWN_PARTIAL = re.compile(r"^\d+\.orbax-checkpoint-tmp")
# Files inside a directory that make it an Orbax, Flax or TF checkpoint.
_MARKERS = ("_CHECKPOINT_METADATA", "_METADATA", "manifest.ocdbt",
            "checkpoint", "saved_model.pb")


def foreign_checkpoints(directory: str) -> List[str]:
  """The entries of ``directory`` that look like checkpoints jaxhooks does
  not read (sorted names): not a step directory of its own, not hidden,
  and named like a checkpoint or holding checkpoint files. Other files
  (TensorBoard events, configs) are not listed.

  Example:
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> for name in ("checkpoint_220", "4", "events.out.tfevents.1.host",
    ...              "exported"):
    ...   os.makedirs(os.path.join(d, name))
    >>> open(os.path.join(d, "exported", "_METADATA"), "w").close()
    >>> foreign_checkpoints(d)
    ['checkpoint_220', 'exported']
  """
  path = epath.Path(directory)
  if not path.exists():
    return []
  found = []
  for entry in path.iterdir():
    name = entry.name
    if (name.startswith(".") or name.isdigit() or name.endswith(".lock")
        or _OWN_PARTIAL.match(name)):
      continue
    if _FOREIGN_NAME.search(name) or (entry.is_dir() and any(
        (entry / marker).exists() for marker in _MARKERS)):
      found.append(name)
  return sorted(found)


def check_foreign(directory: str, mode: str) -> None:
  """For a ``directory`` without jaxhooks checkpoints: raises (``mode``
  ``"raise"``) or warns (``"warn"``) when it holds checkpoints of another
  tool, which a run would otherwise silently train and save beside.

  Raises:
    CheckpointError: naming them and how to import one.
  """
  foreign = foreign_checkpoints(directory)
  if not foreign:
    return
  shown = foreign[:8] + (["..."] if len(foreign) > 8 else [])
  what = (f"`checkpoint_dir` {directory!r} holds checkpoints that jaxhooks "
          f"does not read ({', '.join(shown)}) and none of its own")
  if mode == "warn":
    log.warning("%s; training starts from the given state and saves beside "
                "them.", what)
    return
  raise CheckpointError(
      f"{what}: training would start from the given state and save beside "
      "them. To import one, restore it into the state yourself (for example "
      "with `orbax.checkpoint.StandardCheckpointer().restore(path, target)` "
      "or Flax's `checkpoints.restore_checkpoint(path, target)`) and hand "
      "that state to `begin` with `CheckpointSaverHook(..., "
      "foreign_checkpoints='warn')`; or use another `checkpoint_dir`.")
