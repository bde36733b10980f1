"""What summaries, a progress bar and early stopping cost over a bare loop.

  python benchmarks/observability_overhead.py [--steps 3000] [--repeats 7]

A tiny dispatch-bound jitted step runs, in one process and interleaved:

- bare: ``state, outputs = train_step(state, batch)`` in a Python loop;
- core: ``jaxhooks.wrap`` with a StopAtStepHook only;
- hooked: ``jaxhooks.wrap`` with StopAtStepHook, SummarySaverHook (TensorBoard,
  every 100 steps), StepCounterHook writing to the same event file,
  ProgressBarHook (plain lines), EarlyStoppingHook (every 100 steps).

It prints the median time per step of each and the ratios hooked/bare and
hooked/core (the cost of the observability hooks themselves).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import pathlib
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import jaxhooks as jh  # pylint: disable=g-import-not-at-top


@jax.jit
def train_step(state, batch):
  w = state["w"] - 0.01 * (state["w"] - batch)
  return {"w": w, "step": state["step"] + 1}, {"loss": jnp.mean(w ** 2)}


def init():
  return {"w": jnp.ones(16), "step": jnp.array(0)}


def bare(steps, batch):
  state = init()
  start = time.perf_counter()
  for _ in range(steps):
    state, _ = train_step(state, batch)
  jax.block_until_ready(state)
  return time.perf_counter() - start


def observability_hooks(logdir):
  summaries = jh.SummarySaverHook(save_steps=100, output_dir=logdir,
                                  scalars=["loss"])
  return [
      summaries,
      jh.StepCounterHook(every_n_steps=100, writer=summaries.writer),
      jh.ProgressBarHook(metrics=["loss"], stream=io.StringIO(), plain=True),
      jh.EarlyStoppingHook("loss", patience=10**6, every_n_iter=100),
  ]


def hooked(steps, batch, logdir=None):
  extra = [] if logdir is None else observability_hooks(logdir)
  step = jh.wrap(train_step, hooks=[jh.StopAtStepHook(last_step=steps)]
                 + extra)
  state = step.begin(init())
  start = time.perf_counter()
  stop = False
  while not stop:
    state, _, stop = step(state, batch)
  state = step.end(state)
  jax.block_until_ready(state)
  return time.perf_counter() - start


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument("--repeats", type=int, default=7)
  args = parser.parse_args(argv)
  batch = jnp.zeros(16)
  with tempfile.TemporaryDirectory() as logdir:
    bare(100, batch), hooked(100, batch, logdir)   # compile, warm up
    times = {"bare": [], "core": [], "hooked": []}
    for _ in range(args.repeats):
      times["bare"].append(bare(args.steps, batch))
      times["core"].append(hooked(args.steps, batch))
      times["hooked"].append(hooked(args.steps, batch, logdir))
  us = {k: 1e6 * statistics.median(v) / args.steps for k, v in times.items()}
  print(f"{args.steps} steps x {args.repeats} repeats, median per step: "
        f"bare {us['bare']:.1f} us, core {us['core']:.1f} us, "
        f"hooked {us['hooked']:.1f} us; hooked/bare "
        f"{us['hooked'] / us['bare']:.2f}, hooked/core "
        f"{us['hooked'] / us['core']:.2f}")


if __name__ == "__main__":
  main()
