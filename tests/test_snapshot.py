"""Snapshots of a state for background writes, and the writer thread."""

import os
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxhooks.snapshot import BackgroundWriter, snapshot

def _next(x):
  if jnp.issubdtype(x.dtype, jax.dtypes.extended):
    return jax.random.split(x, 1)[0]
  return x + 1


donating_step = jax.jit(lambda s: jax.tree_util.tree_map(_next, s),
                        donate_argnums=0)


def big_state():
  return {"w": jnp.arange(1000, dtype=jnp.float32),
          "b": jnp.ones((3, 5), jnp.bfloat16), "step": jnp.asarray(7)}


def test_not_donated_holds_the_arrays_themselves():
  """No copy of an array; the containers are the snapshot's own, as the
  state's may change in place (Flax NNX objects)."""
  state = big_state()
  snap = snapshot(state, donated=False)
  assert snap is not state and sorted(snap) == sorted(state)
  assert all(snap[k] is state[k] for k in state)
  state["w"] = jnp.zeros(3)
  assert snap["w"].shape == (1000,)


def test_donated_copy_outlives_the_donation_bit_for_bit():
  state = big_state()
  before = {k: np.asarray(v).tobytes() for k, v in state.items()}
  buffers = {}
  snap = snapshot(state, donated=True, buffers=buffers)
  new = donating_step(state)
  jax.block_until_ready(new)
  assert all(state[k].is_deleted() for k in state)   # really donated
  assert {k: np.asarray(v).tobytes() for k, v in snap.items()} == before
  # The copies live on the kept host buffers, 64-byte aligned, seen as JAX
  # arrays where DLPack can carry the dtype (not bfloat16: leaf 0, "b").
  leaves = jax.tree_util.tree_leaves(snap)
  assert sorted(buffers) == [0, 1, 2]
  assert leaves[0] is buffers[0]
  for i in (1, 2):
    assert isinstance(leaves[i], jax.Array)
    assert leaves[i].unsafe_buffer_pointer() == buffers[i].ctypes.data
  assert all(b.ctypes.data % 64 == 0 for b in buffers.values())


def test_host_buffers_are_reused_while_shapes_match():
  buffers = {}
  snapshot(big_state(), donated=True, buffers=buffers)
  kept = {i: b.ctypes.data for i, b in buffers.items()}
  snapshot(big_state(), donated=True, buffers=buffers)
  assert {i: b.ctypes.data for i, b in buffers.items()} == kept
  snapshot({"w": jnp.zeros(4), "b": jnp.ones((3, 5), jnp.bfloat16),
            "step": jnp.asarray(1)}, donated=True, buffers=buffers)
  assert buffers[2].shape == (4,)            # "w" is leaf 2: a new buffer
  assert buffers[0].ctypes.data == kept[0]


SHARDED = """
import jax, jax.numpy as jnp, numpy as np
from jaxhooks.snapshot import snapshot
mesh = jax.sharding.Mesh(np.array(jax.devices()), ("x",))
sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
x = jax.device_put(jnp.arange(8.0), sharding)
y = jax.device_put(jnp.arange(3.0), jax.devices()[1])
snap = snapshot({"x": x, "y": y}, donated=True, buffers={})
print(snap["y"].devices() == {jax.devices()[1]}, snap["y"].tolist())
print(len(jax.devices()), snap["x"].sharding == sharding,
      {s.data.unsafe_buffer_pointer() for s in snap["x"].addressable_shards}
      .isdisjoint(s.data.unsafe_buffer_pointer()
                  for s in x.addressable_shards), snap["x"].tolist())
"""


@pytest.mark.slow
def test_sharded_and_other_device_leaves_are_copied_on_their_devices():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", SHARDED], env=env, check=True,
                       capture_output=True, text=True, timeout=120).stdout
  assert out.split("\n")[-3:-1] == [
      "True [0.0, 1.0, 2.0]",     # a leaf on device 1 stays there
      "2 True True [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]"]


def test_writer_runs_writes_in_order_off_the_calling_thread():
  seen = []
  writer = BackgroundWriter()
  for i in range(3):
    writer.submit(lambda s: seen.append(
        (int(s["step"]), threading.current_thread().name)),
                  {"step": jnp.asarray(i)}, donated=True)
  writer.close()
  assert [s for s, _ in seen] == [0, 1, 2]
  assert all(name.startswith("jaxhooks-checkpoint") for _, name in seen)


def test_a_failed_write_surfaces_at_the_next_submit_and_not_twice():
  def fail(snap):
    raise OSError("disk full")
  writer = BackgroundWriter()
  writer.submit(fail, {"w": jnp.ones(2)}, donated=False)
  with pytest.raises(OSError, match="disk full"):
    writer.submit(lambda s: None, {"w": jnp.ones(2)}, donated=False)
  assert not writer.pending          # the second write was not started
  writer.wait()                      # nothing left to report
  writer.close()


def test_prng_keys_and_empty_leaves_are_snapshotted_too():
  state = {"key": jax.random.key(3), "empty": jnp.zeros((0,)),
           "w": jnp.ones(2)}
  key_data = np.asarray(jax.random.key_data(state["key"])).tobytes()
  snap = snapshot(state, donated=True, buffers={})
  jax.block_until_ready(donating_step(state))
  assert state["key"].is_deleted()
  assert np.asarray(jax.random.key_data(snap["key"])).tobytes() == key_data
  assert snap["empty"].shape == (0,) and snap["w"].tolist() == [1.0, 1.0]
