"""A small training job for the kill-and-resume tests.

Usage::

  python tests/resume_job.py CKPT_DIR OUT_NPZ [--die-at STEP --die-how HOW]
      [--pause-at STEP] [--hold]

Trains a tiny Flax MLP with Adam for 22 steps on data drawn from a seekable
iterator, checkpointing every 4 steps (async) and at the end (step 22, in
``end()``), and writes the final params, optimizer state, step and data
position to OUT_NPZ. Prints ``step N`` after each step and ``saved N`` after
each save starts. ``--die-at`` makes the process SIGKILL itself:
``after_step`` right after step N ran, ``mid_save`` while the save of step N
is being written (before its commit). ``--pause-at N`` prints ``paused N`` after step N and waits
for a line on stdin (the test sends SIGTERM meanwhile). ``--hold`` prints
``holding`` at the very end and waits for a line on stdin before exiting (a
test that kills the process from outside is then sure to find it alive).
"""

import argparse
import os
import signal
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import jaxhooks as jh  # noqa: E402

LAST_STEP = 22  # not a multiple of SAVE_STEPS: end() saves
SAVE_STEPS = 4


class Batches:
  """Batch i is a function of i alone; the position can be saved."""

  def __init__(self):
    self.position = 0

  def __next__(self):
    rng = np.random.default_rng(self.position)
    self.position += 1
    x = rng.normal(size=(8, 4)).astype(np.float32)
    return x, (x.sum(axis=1, keepdims=True) > 0).astype(np.float32)

  def get_state(self):
    return {"position": self.position}

  def set_state(self, state):
    self.position = int(state["position"])


class Mlp(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Dense(1)(nn.tanh(nn.Dense(16)(x)))


def _loss(params, apply_fn, batch):
  x, y = batch
  return optax.sigmoid_binary_cross_entropy(apply_fn(params, x), y).mean()


@jax.jit
def train_step(state, batch):
  loss, grads = jax.value_and_grad(_loss)(state.params, state.apply_fn, batch)
  return state.apply_gradients(grads=grads), {"loss": loss}


train_step_donated = jax.jit(train_step.__wrapped__, donate_argnums=0)


class DieMidSave(jh.CheckpointSaverListener):
  """Prints each save; kills the process while the save of ``step`` is
  being written: when the write, all items on disk in the temporary
  directory, renames it to the step's directory (its commit)."""

  def __init__(self, step):
    self.step = step
    if step >= 0:
      os.rename = self._rename

  def _rename(self, src, dst, *args, **kwargs):
    if os.path.basename(os.fspath(src)).startswith(
        f"{self.step}.orbax-checkpoint-tmp"):
      os.kill(os.getpid(), signal.SIGKILL)
    return _os_rename(src, dst, *args, **kwargs)

  def after_save(self, session, global_step_value):
    print(f"saved {global_step_value}", flush=True)


_os_rename = os.rename


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("ckpt_dir")
  parser.add_argument("out")
  parser.add_argument("--die-at", type=int, default=None)
  parser.add_argument("--die-how", choices=["after_step", "mid_save"],
                      default="after_step")
  parser.add_argument("--pause-at", type=int, default=None)
  parser.add_argument("--hold", action="store_true")
  args = parser.parse_args()

  model = Mlp()
  params = model.init(jax.random.key(0), jnp.zeros((1, 4)))
  state = train_state.TrainState.create(
      apply_fn=model.apply, params=params, tx=optax.adam(0.05))
  state = state.replace(step=jnp.asarray(0, jnp.int32))
  batches = Batches()
  die_mid_save = args.die_how == "mid_save" and args.die_at is not None
  saver = jh.CheckpointSaverHook(
      args.ckpt_dir, save_steps=SAVE_STEPS, data_iterator=batches,
      listeners=[DieMidSave(args.die_at if die_mid_save else -1)])
  step = jh.wrap(train_step_donated,
                 hooks=[jh.StopAtStepHook(last_step=LAST_STEP), saver])
  state = step.begin(state)
  print(f"start {step.step}", flush=True)
  stop = step.should_stop
  while not stop:
    state, _, stop = step(state, next(batches))
    print(f"step {step.step}", flush=True)
    if args.die_how == "after_step" and step.step == args.die_at:
      os.kill(os.getpid(), signal.SIGKILL)
    if step.step == args.pause_at:
      print(f"paused {step.step}", flush=True)
      sys.stdin.readline()
  state = step.end(state)
  leaves = jax.tree_util.tree_leaves_with_path(
      {"params": state.params, "opt_state": state.opt_state})
  arrays = {jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves}
  np.savez(args.out, step=np.asarray(state.step), position=batches.position,
           **arrays)
  print(f"done {step.step} stop_reasons={step.coord.stop_reasons}", flush=True)
  if args.hold:
    print("holding", flush=True)
    sys.stdin.readline()


if __name__ == "__main__":
  main()
