"""Helpers of the observability tests: a scripted step, a loop driver and
a spy on the runner's device reads (the fake clock is ``_util``'s)."""

import jax
import jax.numpy as jnp
import numpy as np

import jaxhooks as jh
from jaxhooks import fetch


def scripted_step(losses):
  """A jitted step whose loss at global step s is ``losses[s - 1]``."""
  table = jnp.asarray(losses, jnp.float32)

  @jax.jit
  def train_step(state, batch):
    del batch
    step = state["step"]
    return {"step": step + 1}, {"loss": table[step],
                                "double": 2.0 * table[step],
                                "vec": table[step] * jnp.arange(1.0, 4.0)}
  return train_step


def expected(losses, steps):
  """The float32 values of ``losses`` at global ``steps``."""
  return [float(np.float32(losses[s - 1])) for s in steps]


def state_at(step=0):
  return {"step": jnp.asarray(step, jnp.int32)}


def run(train_step, hooks, state=None, *, max_calls=10_000):
  """Drives ``wrap(train_step, hooks)`` to its stop; returns the HookedStep."""
  step = jh.wrap(train_step, hooks)
  state = step.begin(state_at() if state is None else state)
  calls = 0
  while not step.should_stop:
    state, _, _ = step(state)
    calls += 1
    assert calls <= max_calls
  step.end(state)
  return step


class FetchSpy:
  """Counts the runner's device reads (the real reads still happen)."""

  def __init__(self, monkeypatch):
    self.calls = 0
    real = fetch.device_fetches

    def counting(*args, **kwargs):
      self.calls += 1
      return real(*args, **kwargs)
    monkeypatch.setattr(fetch, "device_fetches", counting)
