"""The numbers reporting hooks write, and the outputs they name.

Reporting hooks (``LoggingTensorHook``, ``SummarySaverHook``,
``ProgressBarHook``, ``EarlyStoppingHook`` and ``CheckpointSaverHook``'s
``best_metric``) report each value as one number, by one rule::

  one element                      -> that element
  every element equal (replicated) -> its first element: a `pmap` output
                                      reduced with `lax.pmean` has a leading
                                      device axis of equal values
  anything else                    -> ValueError naming the hook, the
                                      argument and the output

The outputs a hook names (``Hook.output_names()``) are checked once, at the
first call, by :func:`check_outputs`: each must be one the step returns and
follow the rule, so that a misspelled name or a per-device value fails
before any trigger step (and the checkpoint saved on it) is lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterable, NamedTuple, Optional, Tuple, cast

import jax
import jax.numpy as jnp
import numpy as np

from jaxhooks import fetch

__all__ = ["scalar", "reportable", "outputs_of", "check_outputs",
           "named_outputs", "Replicated", "summarize"]


class Replicated(NamedTuple):
  """A value of many elements summarized on the device (:func:`summarize`):
  its first element, whether every element equals it, and its shape."""

  first: Any
  equal: Any
  shape: Tuple[int, ...]


def summarize(value: Any) -> Any:
  """On the device: ``value`` itself when it has one element, else a
  :class:`Replicated` (two scalars are read instead of the whole array)."""
  if np.size(value) == 1:
    return value
  flat = jnp.ravel(value)
  first = flat[0]
  same = flat == first
  if jnp.issubdtype(flat.dtype, jnp.inexact):
    same = same | (jnp.isnan(flat) & jnp.isnan(first))
  return Replicated(first, jnp.all(same), tuple(np.shape(value)))


def reportable(value: Any) -> Optional[np.generic]:
  """The number the rule reports for a host ``value``, or ``None`` when it
  reports none (no elements, or elements that differ).

  Example:
    >>> import numpy as np
    >>> print(reportable(np.float32(0.5)), reportable(np.array([[2, 2]])))
    0.5 2
    >>> reportable(np.array([1.0, 3.0])) is None
    True
  """
  if isinstance(value, Replicated):
    if not value.equal:
      return None
    # numpy's stubs type ``a[()]`` as an array; on a 0-d array it is a scalar.
    return cast(np.generic, np.asarray(value.first).reshape(())[()])
  arr = np.asarray(value)
  if arr.size == 0:
    return None
  first = arr.reshape(-1)[0]
  if arr.size == 1:
    return first
  nan = np.issubdtype(arr.dtype, np.inexact)
  if np.array_equal(arr, np.full_like(arr, first), equal_nan=nan):
    return first
  return None


def scalar(value: Any, *, who: str, name: Any) -> np.generic:
  """The number a reporting hook writes for ``value`` (see the module's
  rule).

  Args:
    value: a host value (``numpy`` array or scalar, Python number).
    who: the hook and its argument, e.g. ``"SummarySaverHook `scalars`"``.
    name: the output's name or tag.

  Raises:
    ValueError: the value has no elements, or elements that differ.

  Example:
    >>> import numpy as np
    >>> print(scalar(np.array([0.25, 0.25]), who="ProgressBarHook `metrics`",
    ...              name="loss"))
    0.25
    >>> scalar(np.array([0.25, 0.5]), who="ProgressBarHook `metrics`",
    ...        name="loss")
    Traceback (most recent call last):
    ...
    ValueError: ProgressBarHook `metrics` 'loss' is not a scalar: got shape (2,) with elements that differ. Reporting hooks write a scalar, or the first element of a replicated value (every element equal, as a `pmap` output reduced with `lax.pmean`); reduce it in the step (e.g. `jnp.mean`).
  """
  number = reportable(value)
  if number is not None:
    return number
  shape = (tuple(value.shape) if isinstance(value, Replicated)
           else np.shape(value))
  what = "no elements" if 0 in shape else "elements that differ"
  raise ValueError(
      f"{who} {name!r} is not a scalar: got shape {shape} with {what}. "
      "Reporting hooks write a scalar, or the first element of a replicated "
      "value (every element equal, as a `pmap` output reduced with "
      "`lax.pmean`); reduce it in the step (e.g. `jnp.mean`).")


def named_outputs(fetches: Any) -> Tuple[str, ...]:
  """The output names among the leaves of a fetch structure.

  Example:
    >>> named_outputs({"a": "loss", "b": len, "c": "acc"})
    ('loss', 'acc')
  """
  leaves = jax.tree_util.tree_leaves(fetches, is_leaf=callable)
  return tuple(x for x in leaves if isinstance(x, str))


def check_outputs(hooks: Iterable[Any], outputs: Any) -> None:
  """Checks, at the first call, the outputs every hook names in
  ``output_names()``: each is returned by the step and reports a number
  (:func:`scalar`). Reads the device only when a named output has more
  than one element (one ``jax.device_get``, at this call only).

  Raises:
    ValueError: a name the step does not return, or a value the rule
      refuses; the message names the hook, its argument and the output.
    TypeError: a hook names outputs, but the step's outputs are not a dict.
  """
  wide = []
  for hook in hooks:
    for arg, names in hook.output_names().items():
      who = f"{type(hook).__name__} `{arg}`"
      for name in names:
        value = fetch.output(outputs, name, who=who)
        if np.size(value) != 1:
          wide.append((who, name, value))
  if wide:
    values = jax.device_get([summarize(v) for _, _, v in wide])
    for (who, name, _), value in zip(wide, values):
      scalar(value, who=who, name=name)


def outputs_of(values: Mapping, who: str) -> dict:
  """``{tag: number}`` of a hook's fetched ``{tag: value}`` (the rule).

  Example:
    >>> import numpy as np
    >>> {k: float(v) for k, v in outputs_of(
    ...     {"loss": np.array([0.5, 0.5])}, "LoggingTensorHook `tensors`").items()}
    {'loss': 0.5}
  """
  return {tag: scalar(v, who=who, name=tag) for tag, v in values.items()}
