"""What the standard hook set costs over a bare jitted loop.

  python benchmarks/hook_overhead.py [--model tiny|large|host|all] [--rounds 7]

A Flax MLP (two Dense layers, a Dense head of 10) trained with Adam on
batches of 64 features: ``tiny`` (width 64, batch 32) is dispatch-bound,
``large`` (width 512, batch 256) is compute-bound. ``host`` (width 1, batch
1) does almost no device work, so its rows show what each loop costs the
host per step: what a fast accelerator sees. In one process, interleaved
round by round, each loop runs the same steps:

- ``bare``: ``state, outputs = train_step(state, batch)`` in a Python loop;
- ``tf_style``: the same, reading the step and the loss on the host after
  every step, as a TF1 ``MonitoredSession`` loop with per-step hooks does;
- ``hooks``: ``jaxhooks.wrap`` with the standard set: ``StopAtStepHook``,
  ``LoggingTensorHook`` and ``StepCounterHook`` every 100 steps,
  ``NanTensorHook``, async ``CheckpointSaverHook`` (``save_secs=600``, TF's
  default period: no save falls inside a round; the block per save is
  measured separately below);
- ``hooks_lag``: the same with ``lag_fetches=True``;
- ``hooks_no_nan``: the same without ``NanTensorHook``: the difference to
  ``hooks`` is what its on-device sentinel (one more program argument and
  output per step) costs;
- ``fused10``: the same hooks with ``steps_per_call=10`` (stacked batches);
- ``clu``: when ``jax-loop-utils`` (CLU's periodic actions without
  TensorFlow) is installed, its ``ReportProgress`` and ``PeriodicCallback``
  loop doing the same work (log the loss every 100 steps, step rate every
  100 steps, a time-based checkpoint callback).

Each loop is timed from its second call to the end of its last step (the
device is waited for), with Python's garbage collector paused as ``timeit``
does; begin/end, compilation and the first call are outside. The loops run
in a new shuffled order each round. It prints one JSON object per model:
median microseconds per step of each loop; ``ratio_to_bare``, the median
over rounds of each round's time divided by the bare loop's time of that
round (and ``ratio_range``, the smallest and largest of those); and how
long one async save of the same state blocks the hooked loop.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import random
import pathlib
import statistics
import sys
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import jaxhooks as jh  # pylint: disable=g-import-not-at-top

MODELS = {"tiny": dict(width=64, batch=32, steps=3000),
          "large": dict(width=512, batch=256, steps=200),
          "host": dict(width=1, batch=1, steps=3000)}
K = 10


class MLP(nn.Module):
  width: int

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(self.width)(x))
    x = nn.relu(nn.Dense(self.width)(x))
    return nn.Dense(10)(x)


def setup(width: int, batch: int):
  model = MLP(width)
  params = model.init(jax.random.key(0), jnp.zeros((1, 64)))["params"]
  state = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                        tx=optax.adam(1e-3))

  @jax.jit
  def train_step(state, batch):
    x, y = batch

    def loss_fn(p):
      logits = state.apply_fn({"params": p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), {"loss": loss}

  rng = np.random.default_rng(0)
  one = (jnp.asarray(rng.normal(size=(batch, 64)), jnp.float32),
         jnp.asarray(rng.integers(0, 10, size=batch), jnp.int32))
  return state, train_step, one


def standard_hooks(last_step: int, ckpt_dir: str, *, nan: bool = True):
  hooks = [jh.StopAtStepHook(last_step=last_step),
           jh.LoggingTensorHook(["loss"], every_n_iter=100),
           jh.StepCounterHook(every_n_steps=100),
           jh.NanTensorHook("loss"),
           jh.CheckpointSaverHook(ckpt_dir, save_secs=600, max_to_keep=1)]
  return hooks if nan else [h for h in hooks
                            if not isinstance(h, jh.NanTensorHook)]


def bare(state, train_step, batch, steps, *, read_each_step=False):
  """The plain loop; ``read_each_step``: the TF1-style loop, which reads the
  step and the loss on the host after every step."""
  state, _ = train_step(state, batch)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    state, outputs = train_step(state, batch)
    if read_each_step:
      int(state.step), float(outputs["loss"])
  jax.block_until_ready(state)
  return time.perf_counter() - start


def hooked(state, train_step, batch, steps, *, k=1, lag=False, stacks=None,
           nan=True):
  with tempfile.TemporaryDirectory() as ckpt:
    step = jh.wrap(train_step, hooks=standard_hooks(steps + 1, ckpt, nan=nan),
                   steps_per_call=k, lag_fetches=lag)
    state = step.begin(state)

    def call(state):
      if k == 1:
        return step(state, batch)
      return step(state, stacks[step.steps_next_call])
    state, _, _ = call(state)   # compiles; outside the timed part
    jax.block_until_ready(state)
    start = time.perf_counter()
    stop = False
    while not stop:
      state, _, stop = call(state)
    jax.block_until_ready(state)
    elapsed = time.perf_counter() - start
    step.end(state)
  return elapsed


def clu_loop(state, train_step, batch, steps):
  from jax_loop_utils import periodic_actions  # pylint: disable=g-import-not-at-top
  log = logging.getLogger("jaxhooks")
  actions = [
      periodic_actions.ReportProgress(num_train_steps=steps + 1,
                                      every_steps=100, every_secs=None),
      periodic_actions.PeriodicCallback(every_secs=600, callback_fn=lambda *a,
                                        **k: None),   # the checkpoint slot
  ]
  outputs = {}
  log_loss = periodic_actions.PeriodicCallback(
      every_steps=100, callback_fn=lambda step, t: log.info(
          "loss = %s", float(outputs["loss"])))
  state, outputs = train_step(state, batch)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for i in range(2, steps + 2):
    state, outputs = train_step(state, batch)
    for action in actions:
      action(i)
    log_loss(i)
  jax.block_until_ready(state)
  return time.perf_counter() - start


def have_clu() -> bool:
  try:
    import jax_loop_utils.periodic_actions  # noqa: F401 pylint: disable=g-import-not-at-top,unused-import
    return True
  except ImportError:
    return False


def save_block_ms(state, train_step, batch, saves=5, every=50):
  """Median time the call that starts an async save blocks the loop."""
  blocked = []
  with tempfile.TemporaryDirectory() as ckpt:
    hook = jh.CheckpointSaverHook(ckpt, save_steps=every, max_to_keep=2)
    step = jh.wrap(train_step, hooks=[
        jh.StopAtStepHook(last_step=every * saves), hook])
    state = step.begin(state)
    stop = False
    while not stop:
      if step.step % every == every - 1:
        hook.wait_until_finished()   # the previous save is written
      t = time.perf_counter()
      state, _, stop = step(state, batch)
      if step.step % every == 0 and step.step > every:
        blocked.append(time.perf_counter() - t)
    step.end(state)
  return 1e3 * statistics.median(blocked)


def measure(name: str, rounds: int) -> dict:
  cfg = MODELS[name]
  state, train_step, batch = setup(cfg["width"], cfg["batch"])
  steps = cfg["steps"]
  stacks = {n: jax.tree_util.tree_map(
      lambda x, n=n: jnp.stack([x] * n), batch) for n in range(1, K + 1)}
  loops = {
      "bare": lambda: bare(state, train_step, batch, steps),
      "tf_style": lambda: bare(state, train_step, batch, steps,
                               read_each_step=True),
      "hooks": lambda: hooked(state, train_step, batch, steps),
      "hooks_lag": lambda: hooked(state, train_step, batch, steps, lag=True),
      "hooks_no_nan": lambda: hooked(state, train_step, batch, steps,
                                     nan=False),
      "fused10": lambda: hooked(state, train_step, batch, steps, k=K,
                                stacks=stacks),
  }
  if have_clu():
    loops["clu"] = lambda: clu_loop(state, train_step, batch, steps)
  for run in loops.values():   # compile and warm up
    run()
  times = {k: [] for k in loops}
  order = list(loops)
  shuffle = random.Random(0).shuffle
  for _ in range(rounds):
    shuffle(order)     # no loop always runs right after another
    for key in order:
      run = loops[key]
      gc.collect()
      gc.disable()   # as timeit does: no collection pauses inside a loop
      try:
        times[key].append(run())
      finally:
        gc.enable()
  us = {k: 1e6 * statistics.median(v) / steps for k, v in times.items()}
  # Each round's time over the bare loop's time of the same round: slow
  # drifts of the machine cancel; the median and the range over rounds.
  paired = {k: sorted(t / b for t, b in zip(v, times["bare"]))
            for k, v in times.items()}
  return {
      "model": f"{name}: MLP {cfg['width']}x2, batch {cfg['batch']}, Adam",
      "device": str(jax.devices()[0].device_kind),
      "steps_per_round": steps, "rounds": rounds,
      "us_per_step": {k: round(v, 2) for k, v in us.items()},
      "ratio_to_bare": {k: round(statistics.median(v), 3)
                        for k, v in paired.items()},
      "ratio_range": {k: [round(v[0], 3), round(v[-1], 3)]
                      for k, v in paired.items() if k != "bare"},
      "async_save_blocks_ms": round(save_block_ms(state, train_step, batch),
                                    1),
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", choices=["tiny", "large", "host", "all"],
                      default="all")
  parser.add_argument("--rounds", type=int, default=7)
  args = parser.parse_args(argv)
  logging.getLogger("absl").setLevel(logging.ERROR)
  names = list(MODELS) if args.model == "all" else [args.model]
  for name in names:
    print(json.dumps(measure(name, args.rounds)), flush=True)


if __name__ == "__main__":
  main()
