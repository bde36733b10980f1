"""Where the hooked loop's host time per call goes, on a step that is free.

  python benchmarks/call_overhead.py [--calls 20000] [--rounds 7]

A jitted step on a 4-element state does almost no device work, so each
loop's time per call is host time. In one process, interleaved round by
round in a shuffled order, each loop makes the same number of calls:

- ``bare``: the jitted step;
- ``extra_input`` / ``extra_output`` / ``extra_both``: the same step with
  one more int32 argument, result, or both (what a device value carried from
  call to call, such as ``NanTensorHook``'s sentinel, costs);
- ``quiet``: ``jaxhooks.wrap`` with a ``StopAtStepHook`` far away: the call
  path when no hook acts;
- ``nan``: with ``NanTensorHook`` (its sentinel read every 100 steps);
- ``standard``: the standard set of ``hook_overhead.py``.

Then, with the standard set, the median time of a call that reads values
(every 100th) against the other calls. Prints JSON: median µs per call and
the median over rounds of each loop's time over the bare loop's.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import jaxhooks as jh  # noqa: E402
from hook_overhead import standard_hooks  # noqa: E402


def _step(state, batch):
  return ({"step": state["step"] + 1, "w": state["w"] + batch},
          {"loss": jnp.sum(state["w"])})


STEPS = {
    "bare": jax.jit(_step),
    "extra_input": jax.jit(lambda s, b, v: _step(s, b + v)),
    "extra_output": jax.jit(lambda s, b: (*_step(s, b), s["step"])),
    "extra_both": jax.jit(lambda s, b, v: (*_step(s, b), v + 1)),
}
STATE = {"step": jnp.asarray(0), "w": jnp.ones(4)}
BATCH = jnp.ones(4)


def plain(kind: str, calls: int) -> float:
  f, v = STEPS[kind], jnp.int32(0)
  call = {"bare": lambda s: f(s, BATCH)[0],
          "extra_input": lambda s: f(s, BATCH, v)[0],
          "extra_output": lambda s: f(s, BATCH)[0],
          "extra_both": lambda s: f(s, BATCH, v)[0]}[kind]
  state = call(STATE)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(calls):
    state = call(state)
  jax.block_until_ready(state)
  return time.perf_counter() - start


def hooked(hooks_fn, calls: int, per_call: list = None) -> float:
  with tempfile.TemporaryDirectory() as ckpt:
    step = jh.wrap(STEPS["bare"], hooks=hooks_fn(ckpt))
    state = step.begin(STATE)
    state, _, _ = step(state, BATCH)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(calls):
      if per_call is None:
        state, _, _ = step(state, BATCH)
      else:
        t0 = time.perf_counter()
        state, _, _ = step(state, BATCH)
        per_call.append((step.step, time.perf_counter() - t0))
    jax.block_until_ready(state)
    elapsed = time.perf_counter() - start
    step.end(state)
  return elapsed


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--calls", type=int, default=20000)
  parser.add_argument("--rounds", type=int, default=7)
  args = parser.parse_args()
  far = 10 ** 9
  loops = {kind: (lambda kind=kind: plain(kind, args.calls))
           for kind in STEPS}
  loops["quiet"] = lambda: hooked(
      lambda d: [jh.StopAtStepHook(last_step=far)], args.calls)
  loops["nan"] = lambda: hooked(
      lambda d: [jh.StopAtStepHook(last_step=far), jh.NanTensorHook("loss")],
      args.calls)
  loops["standard"] = lambda: hooked(lambda d: standard_hooks(far, d),
                                     args.calls)
  for run in loops.values():       # compile and warm up
    run()
  times = {k: [] for k in loops}
  order = list(loops)
  for _ in range(args.rounds):
    random.Random(len(times["bare"])).shuffle(order)
    for key in order:
      gc.collect()
      gc.disable()
      try:
        times[key].append(loops[key]())
      finally:
        gc.enable()
  per_call = []
  gc.disable()
  hooked(lambda d: standard_hooks(far, d), args.calls, per_call)
  gc.enable()
  reading = [t for s, t in per_call if s % 100 == 0]
  others = [t for s, t in per_call if s % 100]
  print(json.dumps({
      "device": str(jax.devices()[0].device_kind),
      "calls": args.calls, "rounds": args.rounds,
      "us_per_call": {k: round(1e6 * statistics.median(v) / args.calls, 2)
                      for k, v in times.items()},
      "ratio_to_bare": {k: round(statistics.median(
          t / b for t, b in zip(v, times["bare"])), 3)
                        for k, v in times.items()},
      "standard_call_us": {
          "reading_every_100th": round(1e6 * statistics.median(reading), 1),
          "others": round(1e6 * statistics.median(others), 2)},
  }))


if __name__ == "__main__":
  main()
