"""Checkpoint writes on a worker thread, from a snapshot of the state.

An async save must let the loop go on while the state is written, and the
next step call may donate (overwrite) the state's arrays. A snapshot keeps
what the write reads valid until it is done::

  state not donated        the arrays themselves (JAX arrays are immutable,
                           no copy at all) in containers of the snapshot's
                           own: the state's may change in place (Flax NNX
                           objects, which the next call updates)
  donated, on the first    a copy into host buffers that are kept and
  CPU device               reused from save to save (a memcpy), seen by
                           the writer as JAX arrays without a copy
  donated, elsewhere       a copy on the device (one jitted call, dispatched
                           asynchronously: the device copies while the
                           loop goes on; it takes one more state's worth
                           of device memory until the write is done)

``BackgroundWriter.submit`` waits for the previous write (one at a time, so
host buffers are reused and a failed write is reported), takes the snapshot
and hands the write to a worker thread. ``wait`` blocks until the write is
done and raises its error.

Holding a donated array instead would be worse than a synchronous save: JAX
then copies the state for the next step call instead of donating it.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["snapshot", "copy_mutable", "BackgroundWriter", "was_donated"]


def was_donated(state: Any) -> bool:
  """True when an array of ``state`` was deleted (donated to a jitted call).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> state = {"w": jnp.ones(2)}
    >>> _ = jax.jit(lambda s: s, donate_argnums=0)(state)
    >>> was_donated(state), was_donated({"w": jnp.ones(2)})
    (True, False)
  """
  return any(isinstance(x, jax.Array) and x.is_deleted()
             for x in jax.tree_util.tree_leaves(state))


def copy_mutable(state: Any) -> Any:
  """``state`` with every NumPy array leaf copied: the caller may change
  those in place while a write reads them (JAX arrays are immutable and
  stay as they are).

  Example:
    >>> import numpy as np, jax.numpy as jnp
    >>> state = {"w": np.zeros(2), "b": jnp.ones(1)}
    >>> snap = copy_mutable(state)
    >>> state["w"] += 1
    >>> snap["w"].tolist(), snap["b"] is state["b"]
    ([0.0, 0.0], True)
  """
  leaves, treedef = jax.tree_util.tree_flatten(state)
  if not any(isinstance(x, np.ndarray) for x in leaves):
    return state
  return jax.tree_util.tree_unflatten(treedef, _copy_numpy(leaves))


def _copy_numpy(leaves: list) -> list:
  return [np.array(x) if isinstance(x, np.ndarray) else x for x in leaves]


@jax.jit
def _device_copy(leaves: list) -> list:
  return [jnp.copy(x) for x in leaves]


def _aligned_buffer(shape: tuple, dtype: Any) -> np.ndarray:
  """An uninitialised host array whose data is 64-byte aligned, as JAX's
  CPU client needs to use it without a copy."""
  dtype = np.dtype(dtype)
  nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  raw = np.empty(nbytes + 64, np.uint8)
  start = -raw.ctypes.data % 64
  return raw[start:start + nbytes].view(dtype).reshape(shape)


def _as_jax(buf: np.ndarray) -> Any:
  """A JAX array on ``buf``'s memory, or ``buf`` where DLPack cannot carry
  it (bfloat16, an empty array, ...). Orbax writes JAX arrays faster than
  NumPy ones, which it copies first."""
  try:
    return jax.dlpack.from_dlpack(buf, copy=False)
  except (BufferError, ValueError):
    return buf


def _host_device() -> Any:
  """The device a host buffer shows up on as a JAX array: the first CPU
  device (``None`` without a CPU backend)."""
  try:
    return jax.local_devices(backend="cpu")[0]
  except RuntimeError:
    return None


def _on_device(x: Any, device: Any) -> bool:
  """A plain array on ``device`` only (not a PRNG key, not sharded)."""
  if not (isinstance(x, jax.Array) and x.is_fully_addressable
          and len(x.sharding.device_set) == 1):
    return False
  if jnp.issubdtype(x.dtype, jax.dtypes.extended):   # PRNG keys, ...
    return False
  return next(iter(x.sharding.device_set)) == device


def snapshot(state: Any, *, donated: bool,
             buffers: Optional[Dict[int, np.ndarray]] = None) -> Any:
  """A tree with the values of ``state`` that stays valid when the next
  step call donates ``state``.

  Args:
    state: a pytree of arrays.
    donated: whether the next step call may donate ``state``'s arrays.
    buffers: host buffers by leaf index, reused when shape and dtype match
      (filled in here); ``None``: fresh ones.

  Example:
    >>> import jax.numpy as jnp
    >>> state = {"w": jnp.arange(3.0)}
    >>> snapshot(state, donated=False)["w"] is state["w"]
    True
    >>> buffers = {}
    >>> snap = snapshot(state, donated=True, buffers=buffers)
    >>> snap["w"].tolist(), snap["w"] is state["w"]
    ([0.0, 1.0, 2.0], False)
    >>> snap["w"].unsafe_buffer_pointer() == buffers[0].ctypes.data
    True
  """
  leaves, treedef = jax.tree_util.tree_flatten(state)
  if not donated:   # containers of its own; NumPy leaves copied
    return jax.tree_util.tree_unflatten(treedef, _copy_numpy(leaves))
  buffers = {} if buffers is None else buffers
  out = _copy_numpy(leaves)
  on_device = []
  host = _host_device()   # a copy onto any other device would move a leaf
  for i, x in enumerate(leaves):
    if host is not None and _on_device(x, host):
      buf = buffers.get(i)
      if buf is None or buf.shape != x.shape or buf.dtype != x.dtype:
        buf = buffers[i] = _aligned_buffer(x.shape, x.dtype)
      np.copyto(buf, np.asarray(x))
      out[i] = _as_jax(buf)
    elif isinstance(x, jax.Array):
      on_device.append(i)
  # One copy program per set of devices (one jitted call cannot mix them).
  groups: Dict[frozenset, list] = {}
  for i in on_device:
    groups.setdefault(frozenset(leaves[i].sharding.device_set), []).append(i)
  for group in groups.values():
    for i, y in zip(group, _device_copy([leaves[i] for i in group])):
      out[i] = y
  return jax.tree_util.tree_unflatten(treedef, out)


class BackgroundWriter:
  """Runs writes of state snapshots on one worker thread, one at a time.

  Example:
    >>> import jax.numpy as jnp
    >>> written = []
    >>> writer = BackgroundWriter()
    >>> writer.submit(lambda s: written.append(s["w"].tolist()),
    ...               {"w": jnp.ones(2)}, donated=True)
    >>> writer.wait(); written
    [[1.0, 1.0]]
    >>> writer.close()
  """

  def __init__(self):
    self._pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="jaxhooks-checkpoint")
    self._future: Optional[concurrent.futures.Future] = None
    self._buffers: Dict[int, np.ndarray] = {}

  @property
  def pending(self) -> bool:
    """True while a write is submitted and not yet waited for."""
    return self._future is not None

  def submit(self, write: Callable[[Any], None], state: Any, *,
             donated: bool) -> None:
    """Waits for the previous write, snapshots ``state`` and starts
    ``write(snapshot)`` on the worker thread.

    Raises:
      Exception: the previous write's error (this write is not started).
    """
    self.wait()
    snap = snapshot(state, donated=donated, buffers=self._buffers)
    self._future = self._pool.submit(write, snap)

  def wait(self) -> None:
    """Blocks until the submitted write is done; raises its error."""
    future, self._future = self._future, None
    if future is not None:
      future.result()

  def close(self) -> None:
    """Waits for the write in flight (raising its error), then frees the
    thread and the host buffers."""
    try:
      self.wait()
    finally:
      self._pool.shutdown(wait=True)
      self._buffers.clear()
