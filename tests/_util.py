"""Shared test helpers: a tiny jitted step on a dict state, a recording
hook, a fake clock, a loop driver and a compile counter.

Tests import them with ``from _util import ...``; ``conftest.py`` holds
only fixtures."""

import contextlib
import os
import threading

import jax
import jax.numpy as jnp

import jaxhooks as jh


@jax.jit
def dict_step(state, batch):
  """w <- w - 0.1 * batch; loss = sum(w^2); step + 1."""
  w = state["w"] - 0.1 * batch
  return {"w": w, "step": state["step"] + 1}, {"loss": jnp.sum(w ** 2),
                                                "w0": w[0]}


def dict_state(step=0, w=(1.0, 2.0)):
  return {"w": jnp.asarray(w, jnp.float32), "step": jnp.asarray(step, jnp.int32)}


class Recorder(jh.SessionRunHook):
  """Appends (name, method, step) to a shared list."""

  def __init__(self, name, log, *, stop_at=None, fetches=None):
    self.name = name
    self.log = log
    self.stop_at = stop_at
    self.fetches = fetches
    self.values = []

  def begin(self):
    self.log.append((self.name, "begin"))

  def after_create_session(self, session, coord):
    self.log.append((self.name, "after_create_session", session.step))

  def before_run(self, run_context):
    self.log.append((self.name, "before_run", run_context.step))
    if self.fetches is not None:
      return jh.RunArgs(fetches=self.fetches)
    return None

  def after_run(self, run_context, run_values):
    self.log.append((self.name, "after_run", run_context.step))
    self.values.append(run_values.results)
    if self.stop_at is not None and run_context.step >= self.stop_at:
      run_context.request_stop()

  def end(self, session):
    self.log.append((self.name, "end", session.step))

  def on_exception(self, session, exc):
    self.log.append((self.name, "on_exception", session.step,
                     type(exc).__name__))


def run_with_save_held(monkeypatch, step, state, batch, read, saver):
  """Runs 3 steps while the write of step 2 (``saver`` saves every 2) is
  held before it makes its directory, then lets it go and ends; returns
  the final state and ``read(state)`` at step 2."""
  release, real = threading.Event(), os.mkdir

  def mkdir(path, *args, **kwargs):
    if os.path.basename(os.fspath(path)).startswith("2.orbax-checkpoint-tmp"):
      assert release.wait(timeout=30)
    return real(path, *args, **kwargs)
  monkeypatch.setattr(os, "mkdir", mkdir)
  state = step.begin(state)
  at_2 = None
  for _ in range(3):
    state, _, _ = step(state, batch)
    if step.step == 2:
      at_2 = read(state)
  assert step.step == 3
  assert [d for d in os.listdir(saver.checkpoint_dir)
          if not d.startswith(".")] == []  # not begun writing (the lock)
  release.set()
  return step.end(state), at_2


class FakeClock:
  """A clock that moves only when told to."""

  def __init__(self, t=0.0):
    self.t = float(t)

  def __call__(self):
    return self.t

  def advance(self, secs):
    self.t += secs


def run_loop(step, state, batch=None, max_calls=10_000):
  """Drives a HookedStep to its stop; returns (state, calls)."""
  if batch is None:
    batch = jnp.ones(2)
  state = step.begin(state)
  stop = step.should_stop
  calls = 0
  while not stop:
    state, _, stop = step(state, batch)
    calls += 1
    assert calls <= max_calls
  return step.end(state), calls


_BACKEND_COMPILES = []
jax.monitoring.register_event_duration_secs_listener(
    lambda name, secs, **kw: _BACKEND_COMPILES.append(name)
    if name == "/jax/core/compile/backend_compile_duration" else None)


@contextlib.contextmanager
def count_compiles():
  """Counts XLA compilations in the block: ``with count_compiles() as n:``,
  then ``n[0]``."""
  start = len(_BACKEND_COMPILES)
  count = [0]
  try:
    yield count
  finally:
    count[0] = len(_BACKEND_COMPILES) - start

