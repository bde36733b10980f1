"""How long a checkpoint save blocks the training loop: async vs sync.

A train state of at least 256 MB (params and one optimizer moment, float32)
is trained by a nearly free jitted step. A save's stall is the time from the
start of the step call before the one that saves until the state of the
step after the save is ready, minus the same for steps without a save: it
counts what the save blocks (finiteness check, snapshot, a synchronous
write) and what the next step waits for (a donated state that is still
being read). Each kind of save runs in one session, as in training, with
a save every 4 steps; the write is waited for between rounds.

The step donates its state (``jax.jit(..., donate_argnums=0)``), as large
models must: its arrays are updated in place, so the next call overwrites
what a save reads. (Without donation XLA writes every output to a new
buffer, so on a CPU each step would copy the whole state, and no step is
nearly free.) Async and sync saves alternate in one process, with Orbax's own
async ``CheckpointManager`` on the bare state as a peer row. The script
prints medians and the ratios as JSON.

  python benchmarks/checkpoint_stall.py [--mb 256] [--reps 7] [--dir DIR]

Target: an async save stalls the loop for at most 1/4 of a sync save.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import jaxhooks as jh  # noqa: E402
from jaxhooks import checkpoint_io, snapshot  # noqa: E402


def make_state(mb: int) -> dict:
  n = mb * 2 ** 20 // 4 // 2  # two float32 arrays of mb/2 MB each
  return {"params": jnp.full((n,), 0.5, jnp.float32),
          "mu": jnp.zeros((n,), jnp.float32),
          "step": jnp.asarray(0, jnp.int32)}


def _train_step(state, batch):
  del batch
  return {**state, "step": state["step"] + 1}, {}


train_step = jax.jit(_train_step, donate_argnums=0)


def two_steps(step, state):
  """Runs two step calls; returns (state, seconds until the second's state
  is ready)."""
  t0 = time.perf_counter()
  state, _, _ = step(state)
  state, _, _ = step(state)
  jax.block_until_ready(state)
  return state, time.perf_counter() - t0


class Hooked:
  """A session that saves every 4th step, as training does: one hook for
  all its saves (its host buffers are reused)."""

  def __init__(self, state, directory, *, async_save):
    self.saver = jh.CheckpointSaverHook(directory, save_steps=4,
                                        max_to_keep=1, async_save=async_save,
                                        save_on_preemption=False)
    self.step = jh.wrap(train_step, hooks=[self.saver])
    self.state, _, _ = self.step(self.step.begin(state))   # step 1

  def round(self):
    """Steps 4k+2..4k+5; the save at 4k+4. Returns (stall, written): the
    pair of steps from the save on minus the pair before, and the time
    until the write is done."""
    self.state, plain = two_steps(self.step, self.state)
    t0 = time.perf_counter()
    self.state, with_save = two_steps(self.step, self.state)
    self.saver.wait_until_finished()
    return with_save - plain, time.perf_counter() - t0

  def close(self):
    self.step.end(self.state)


class OrbaxAsync:
  """The peer: Orbax's async manager saves the bare state every 4th step."""

  def __init__(self, state, directory):
    self.manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=1, enable_async_checkpointing=True))
    self.step = lambda s: (*train_step(s, None), False)  # noqa: E731
    self.state, self.n = state, 0

  def round(self):
    self.state, plain = two_steps(self.step, self.state)
    self.n += 4
    t0 = time.perf_counter()
    self.manager.save(self.n, args=ocp.args.StandardSave(self.state))
    self.state, with_save = two_steps(self.step, self.state)
    self.manager.wait_until_finished()
    return time.perf_counter() - t0 - plain, time.perf_counter() - t0

  def close(self):
    self.manager.close()


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
  kinds = ("async", "sync", "orbax-async")
  runs = {k: ([], []) for k in kinds}
  sessions = {}
  for kind in kinds:
    own = jax.tree_util.tree_map(jnp.copy, state)
    directory = os.path.join(root, kind)
    sessions[kind] = (OrbaxAsync(own, directory) if kind == "orbax-async"
                      else Hooked(own, directory, async_save=kind == "async"))
  del state
  for rep in range(args.reps + 1):          # rep 0 warms up (compiles)
    for kind, session in sessions.items():
      stall, written = session.round()
      if rep:
        runs[kind][0].append(stall)
        runs[kind][1].append(written)
  for session in sessions.values():
    session.close()
  state = sessions["sync"].state
  med = {k: (statistics.median(s), statistics.median(w))
         for k, (s, w) in runs.items()}
  for kind in kinds:
    stalls = ", ".join(f"{s * 1e3:.0f}" for s in runs[kind][0])
    print(f"{kind:12s} loop stalled median {med[kind][0] * 1e3:7.1f} ms "
          f"(runs: {stalls}); written after {med[kind][1] * 1e3:7.1f} ms")
  # What an async save of a donated state cannot avoid on the loop's
  # thread: the finiteness check, and one copy of the state before the next
  # step overwrites it (here a memcpy into host buffers that are reused).
  checks, copies, buffers = [], [], {}
  for _ in range(args.reps + 1):
    t0 = time.perf_counter()
    bool(checkpoint_io.all_finite(state))
    t1 = time.perf_counter()
    snapshot.snapshot(state, donated=True, buffers=buffers)
    checks.append(t1 - t0)
    copies.append(time.perf_counter() - t1)
  summary = {f"{k}_ms": round(med[k][0] * 1e3, 1) for k in kinds}
  summary["finiteness_check_ms"] = round(statistics.median(checks[1:]) * 1e3,
                                         1)
  summary["state_copy_ms"] = round(statistics.median(copies[1:]) * 1e3, 1)
  summary["ratio_copy_sync"] = round(statistics.median(copies[1:])
                                     / med["sync"][0], 3)
  summary["ratio_async_sync"] = round(med["async"][0] / med["sync"][0], 3)
  summary["ratio_orbax_async_sync"] = round(
      med["orbax-async"][0] / med["sync"][0], 3)
  print(json.dumps(summary))
  ratio = summary["ratio_async_sync"]
  print(f"ratio async/sync stall: {ratio:.3f} (target <= 0.25: "
        f"{'met' if ratio <= 0.25 else 'NOT met'})")
  if not args.dir:
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  main()
