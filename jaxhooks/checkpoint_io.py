"""What goes into a jaxhooks checkpoint, and how a step is written
(``checkpoint_restore`` reads it back).

A checkpoint step directory holds up to three Orbax items::

  <checkpoint_dir>/<step>/state   the train state (StandardCheckpointHandler)
  <checkpoint_dir>/<step>/hooks   {"StopAtStepHook:0": {...}, ...} (JSON)
  <checkpoint_dir>/<step>/data    the data iterator's position (JSON), one
                                  file per process: ``metadata`` for
                                  process 0, ``metadata.process_<i>`` for
                                  process i

Every process saves and restores its own data position; the train state and
the hook states are shared.
Hook states are keyed by class name and the hook's position among the hooks
of that class, so adding or removing hooks of other classes (or running the
logging hooks on process 0 only) does not shift the keys.
"""

from __future__ import annotations

import base64
import functools
import logging
import math
import os
from collections.abc import Mapping
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jaxhooks.errors import CheckpointError

__all__ = [
    "make_manager", "check_writable", "all_finite", "hook_states",
    "load_hook_states", "to_json", "from_json",
    "data_filename", "first_nonfinite_leaf", "step_writer",
    "absolute", "data_position_functions",
]

log = logging.getLogger("jaxhooks")

STATE, HOOKS, DATA = "state", "hooks", "data"
_BYTES = "__bytes_b64__"
_FLOAT = "__float__"


def make_manager(directory: str, *, max_to_keep: Optional[int],
                 keep_period: Optional[int], best_metric: Optional[str],
                 best_mode: str, async_save: bool,
                 read_only: bool = False) -> ocp.CheckpointManager:
  """An Orbax ``CheckpointManager`` for the three jaxhooks items.

  Retention keeps the union of: the ``max_to_keep`` latest checkpoints (or,
  with ``best_metric``, the ``max_to_keep`` best ones and the latest one,
  from which a restart resumes; a NaN metric ranks last), and every step
  that is a multiple of ``keep_period``.
  """
  keep = ocp.checkpoint_managers.preservation_policy
  best_fn = None
  policies = []
  if best_metric is not None:
    best_fn = functools.partial(_rank, best_metric,
                                math.inf if best_mode == "min" else -math.inf)
    policies += [keep.LatestN(n=1), keep.BestN(
        get_metric_fn=best_fn, reverse=best_mode == "min", n=max_to_keep,
        keep_checkpoints_without_metrics=True)]
  else:
    policies.append(keep.LatestN(n=max_to_keep))
  if keep_period is not None:
    policies.append(keep.EveryNSteps(keep_period))
  options = ocp.CheckpointManagerOptions(
      best_fn=best_fn, best_mode=best_mode,
      preservation_policy=keep.AnyPreservationPolicy(policies),
      create=not read_only, cleanup_tmp_directories=not read_only,
      read_only=read_only,
      enable_async_checkpointing=async_save,
      # Create the step directory before save() returns: a directory that
      # cannot be made fails that save at once instead of in the background.
      async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
  # Every process writes (primary_host=None) and reads its own data file.
  handlers = {STATE: ocp.StandardCheckpointHandler(),
              HOOKS: ocp.JsonCheckpointHandler(),
              DATA: ocp.JsonCheckpointHandler(
                  data_filename(jax.process_index()),
                  multiprocessing_options=ocp.options.MultiprocessingOptions(
                      primary_host=None))}
  return ocp.CheckpointManager(directory, options=options,
                               item_handlers=handlers)


def _rank(name: str, worst: float, metrics: Mapping[str, Any]) -> float:
  """The value retention ranks a checkpoint by: its metric ``name``, with
  NaN (which compares as neither better nor worse, and so would scramble
  the ranking) as the ``worst`` value: a NaN never counts as better.

  Example:
    >>> _rank("loss", math.inf, {"loss": 0.5}), _rank("loss", math.inf,
    ...                                                {"loss": math.nan})
    (0.5, inf)
  """
  value = float(metrics[name])
  return worst if math.isnan(value) else value


def data_filename(process_index: int) -> str:
  """The file of a process's data position in the ``data`` item.

  Process 0 uses the name of a single-process checkpoint.

  Example:
    >>> data_filename(0), data_filename(3)
    ('metadata', 'metadata.process_3')
  """
  if process_index == 0:
    return "metadata"
  return f"metadata.process_{process_index}"


def absolute(path: Any) -> str:
  """A local path made absolute (Orbax needs that); URLs stay as they are.

  Example:
    >>> absolute("gs://bucket/run")
    'gs://bucket/run'
  """
  path = os.fspath(path)
  return path if "://" in path else os.path.abspath(path)


def data_position_functions(data_iterator: Any, data_state: Any
                            ) -> Optional[Tuple[Callable, Callable]]:
  """``(get_state, set_state)`` of the data position: the iterator's
  methods, or the given pair, or ``None`` when neither is given.

  Raises:
    ValueError, TypeError: naming the argument and the value.

  Example:
    >>> data_position_functions(None, (dict, print)) == (dict, print)
    True
  """
  if data_iterator is not None and data_state is not None:
    raise ValueError("Give `data_iterator` or `data_state`, not both; got "
                     f"{data_iterator!r} and {data_state!r}.")
  if data_iterator is not None:
    get, put = (getattr(data_iterator, "get_state", None),
                getattr(data_iterator, "set_state", None))
    if not (callable(get) and callable(put)):
      raise TypeError("`data_iterator` must have `get_state()` and "
                      f"`set_state(state)` methods, got {data_iterator!r}.")
    return get, put
  if data_state is not None:
    if not (isinstance(data_state, (tuple, list)) and len(data_state) == 2
            and all(callable(f) for f in data_state)):
      raise TypeError("`data_state` must be a pair of functions "
                      f"(get_state, set_state), got {data_state!r}.")
    return tuple(data_state)
  return None


def check_writable(directory: str, process_index: int = 0) -> None:
  """Creates ``directory`` and writes a probe file in it.

  Raises:
    CheckpointError: naming the directory and the OS error.
  """
  path = epath.Path(directory)
  # One name per process of each run: two runs starting at once must not
  # remove each other's probe.
  probe = path / f".jaxhooks-write-probe-{process_index}-{os.getpid()}"
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise CheckpointError(
        f"`checkpoint_dir` {str(directory)!r} is not a writable directory: "
        f"{type(e).__name__}: {e}") from e


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  # max(|x|) is NaN or inf exactly when some element is (XLA's max
  # propagates NaN), and one max-reduction reads the state about three times
  # faster than all(isfinite(x)) on CPU.
  peaks = [jnp.max(jnp.abs(x)).astype(jnp.float32)
           for x in jax.tree_util.tree_leaves(tree)
           if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
           and np.size(x) > 0]
  return jnp.all(jnp.isfinite(jnp.stack(peaks))) if peaks else jnp.array(True)


def all_finite(tree: Any) -> jax.Array:
  """A device scalar: True when no float leaf of ``tree`` holds NaN or inf.

  Example:
    >>> import jax.numpy as jnp
    >>> bool(all_finite({"w": jnp.ones(2), "step": jnp.array(3)}))
    True
    >>> bool(all_finite({"w": jnp.array([1.0, jnp.nan])}))
    False
    >>> bool(all_finite({"w": jnp.array([-jnp.inf, 1.0], jnp.bfloat16)}))
    False
  """
  return _all_finite(tree)


@jax.jit
def _leaves_finite(leaves: List[Any]) -> jax.Array:
  return jnp.stack([jnp.isfinite(jnp.max(jnp.abs(x))) for x in leaves])


def first_nonfinite_leaf(tree: Any) -> Optional[str]:
  """The path of the first float leaf of ``tree`` with NaN or inf, or
  ``None``. For error messages only: it checks every leaf separately.

  Example:
    >>> import jax.numpy as jnp
    >>> first_nonfinite_leaf({"a": jnp.ones(2),
    ...                       "b": {"c": jnp.array([1.0, jnp.inf])}})
    "['b']['c']"
    >>> first_nonfinite_leaf({"a": jnp.ones(2)}) is None
    True
  """
  flat = [(path, x) for path, x in jax.tree_util.tree_leaves_with_path(tree)
          if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
          and np.size(x) > 0]
  if not flat:
    return None
  finite = jax.device_get(_leaves_finite([x for _, x in flat]))
  bad = [path for (path, _), ok in zip(flat, finite) if not ok]
  return jax.tree_util.keystr(bad[0]) if bad else None


def step_writer(manager: ocp.CheckpointManager, step: int, directory: str,
                *, hook_states: Dict[str, Any], data: Any,
                metrics: Optional[dict]) -> Callable[[Any], None]:
  """``write(state)``: saves ``state``, the hooks' states and the data
  position as checkpoint ``step``. The values other than the state are
  taken now (on the loop's thread); ``write`` may run on another.

  Raises (from ``write``):
    CheckpointError: naming the step, the directory and the cause.
  """
  items = {HOOKS: ocp.args.JsonSave(hook_states)}
  if data is not None:
    items[DATA] = ocp.args.JsonSave(
        to_json(data, where="the data iterator's state"))

  def write(state: Any) -> None:
    try:
      manager.save(step, args=ocp.args.Composite(
          **items, **{STATE: ocp.args.StandardSave(state)}),
                   metrics=metrics, force=True)
    except Exception as e:
      error = CheckpointError(
          f"Saving step {step} to `checkpoint_dir` {directory!r} failed: "
          f"{type(e).__name__}: {e}")
      # Said at once: on a worker thread, the error reaches the loop only
      # at its next save or at the end.
      log.error("%s", error)
      raise error from e

  return write


# -- JSON values ------------------------------------------------------------


def to_json(value: Any, *, where: str) -> Any:
  """``value`` with numpy/JAX scalars and arrays as Python values, tuples as
  lists, bytes base64-wrapped and NaN/infinite floats wrapped too (JSON has
  no such numbers), so that it can be written as valid JSON.

  Example:
    >>> import numpy as np
    >>> to_json({"n": np.int32(3), "b": b"ab", "t": (1, 2)}, where="x")
    {'n': 3, 'b': {'__bytes_b64__': 'YWI='}, 't': [1, 2]}
    >>> to_json([float("nan"), np.array([-np.inf, 1.5])], where="x")
    [{'__float__': 'nan'}, [{'__float__': '-inf'}, 1.5]]
  """
  if isinstance(value, float) and not math.isfinite(value):
    return {_FLOAT: repr(float(value))}
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  if isinstance(value, (bytes, bytearray)):
    return {_BYTES: base64.b64encode(bytes(value)).decode("ascii")}
  if isinstance(value, Mapping):
    out = {}
    for k, v in value.items():
      if not isinstance(k, str):
        raise TypeError(f"{where}: keys must be strings to be saved, got "
                        f"{k!r}.")
      out[k] = to_json(v, where=where)
    return out
  if isinstance(value, (list, tuple)):
    return [to_json(v, where=where) for v in value]
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    return to_json(np.asarray(value).tolist(), where=where)
  raise TypeError(
      f"{where}: cannot save a {type(value).__name__} ({value!r}) in a "
      "checkpoint; use JSON values (numbers, strings, lists, dicts, bytes).")


def from_json(value: Any) -> Any:
  """Undoes the bytes and float wrapping of :func:`to_json`.

  Example:
    >>> from_json({"b": {"__bytes_b64__": "YWI="}, "f": {"__float__": "-inf"}})
    {'b': b'ab', 'f': -inf}
  """
  if isinstance(value, Mapping):
    if set(value) == {_BYTES}:
      return base64.b64decode(value[_BYTES])
    if set(value) == {_FLOAT}:
      return float(value[_FLOAT])
    return {k: from_json(v) for k, v in value.items()}
  if isinstance(value, list):
    return [from_json(v) for v in value]
  return value


def _hook_keys(hooks: Iterable[Any]) -> List[Tuple[str, Any]]:
  seen: Dict[str, int] = {}
  keyed = []
  for hook in hooks:
    name = type(hook).__name__
    keyed.append((f"{name}:{seen.get(name, 0)}", hook))
    seen[name] = seen.get(name, 0) + 1
  return keyed


def hook_states(hooks: Iterable[Any]) -> Dict[str, Any]:
  """Every hook's ``state_dict()`` that is not ``None``, by stable key."""
  out = {}
  for key, hook in _hook_keys(hooks):
    sd = hook.state_dict()
    if sd is not None:
      out[key] = to_json(sd, where=f"`{key}.state_dict()`")
  return out


def load_hook_states(hooks: Iterable[Any], saved: Mapping[str, Any]) -> None:
  """Calls ``load_state_dict`` on every hook whose state was saved."""
  keyed = _hook_keys(hooks)
  for key, hook in keyed:
    if key in saved:
      hook.load_state_dict(from_json(saved[key]))
  unused = sorted(set(saved) - {k for k, _ in keyed})
  if unused:
    log.warning("The checkpoint holds the state of hooks that are not in "
                "this session, ignored: %s", unused)
