"""How long a checkpoint save blocks the training loop: async vs sync.

A train state of at least 256 MB (params and one optimizer moment, float32)
is trained by a donated, nearly free jitted step, so that the time of the
step call that saves is the time the loop is blocked by the save (the
finiteness check, the copy off the device, and for a synchronous save the
write itself). Async and sync saves of the same state alternate in one
process; the script prints medians and their ratio.

  python benchmarks/checkpoint_stall.py [--mb 256] [--reps 7] [--dir DIR]

Target: an async save blocks the loop for at most 1/4 of a sync save.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import jaxhooks as jh  # noqa: E402
from jaxhooks import checkpoint_io  # noqa: E402


def make_state(mb: int) -> dict:
  n = mb * 2 ** 20 // 4 // 2  # two float32 arrays of mb/2 MB each
  return {"params": jnp.full((n,), 0.5, jnp.float32),
          "mu": jnp.zeros((n,), jnp.float32),
          "step": jnp.asarray(0, jnp.int32)}


def _train_step(state, batch):
  del batch
  return {**state, "step": state["step"] + 1}, {}


train_step = jax.jit(_train_step, donate_argnums=0)


def one_save(state: dict, directory: str, *, async_save: bool):
  """Runs 2 steps, the second saves; returns (state, blocked, written)."""
  saver = jh.CheckpointSaverHook(directory, save_steps=2, max_to_keep=1,
                                 async_save=async_save,
                                 save_on_preemption=False)
  step = jh.wrap(train_step, hooks=[saver])
  state = step.begin(state)
  state, _, _ = step(state)                 # step 1: no save
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  state, _, _ = step(state)                 # step 2: saves
  blocked = time.perf_counter() - t0
  step.end(state)                           # waits for the write
  written = time.perf_counter() - t0
  return state, blocked, written


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--mb", type=int, default=256)
  parser.add_argument("--reps", type=int, default=7)
  parser.add_argument("--dir", default=None)
  args = parser.parse_args()

  root = args.dir or tempfile.mkdtemp(prefix="checkpoint_stall-")
  state = make_state(args.mb)
  size = sum(x.nbytes for x in jax.tree_util.tree_leaves(state))
  print(f"state: {size / 2**20:.0f} MiB, devices: {jax.devices()}, "
        f"dir: {root}")
  results = {True: ([], []), False: ([], [])}
  for rep in range(args.reps + 1):          # rep 0 warms up (compiles)
    for async_save in (True, False):
      # A step of the state's own: each run starts a fresh directory.
      state = {**state, "step": jnp.asarray(0, jnp.int32)}
      directory = os.path.join(root, f"{'async' if async_save else 'sync'}"
                               f"-{rep}")
      state, blocked, written = one_save(state, directory,
                                         async_save=async_save)
      shutil.rmtree(directory)
      if rep:
        results[async_save][0].append(blocked)
        results[async_save][1].append(written)
  med = {k: (statistics.median(b), statistics.median(w))
         for k, (b, w) in results.items()}
  for async_save, name in ((True, "async"), (False, "sync")):
    blocked = ", ".join(f"{b * 1e3:.0f}" for b in results[async_save][0])
    print(f"{name:5s} save: loop blocked median {med[async_save][0] * 1e3:7.1f}"
          f" ms (runs: {blocked}); written after "
          f"{med[async_save][1] * 1e3:7.1f} ms")
  checks = []
  for _ in range(args.reps):
    t0 = time.perf_counter()
    bool(checkpoint_io.all_finite(state))
    checks.append(time.perf_counter() - t0)
  print(f"of which the finiteness check of the state: median "
        f"{statistics.median(checks) * 1e3:.1f} ms (in both)")
  ratio = med[True][0] / med[False][0]
  print(f"ratio async/sync blocked time: {ratio:.3f} "
        f"(target <= 0.25: {'met' if ratio <= 0.25 else 'NOT met'})")
  if not args.dir:
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  main()
