"""What causes speed: no host-device sync on non-trigger steps, no
recompiles after the first step."""

import functools

import jax
import jax.numpy as jnp
import pytest

import jaxhooks as jh
from _util import count_compiles


@functools.partial(jax.jit, static_argnums=2)
def _slow_step(state, batch, rounds=60):
  """A step that takes long enough on the CPU to still be running when a
  non-blocking call returns."""
  def body(_, m):
    return jnp.tanh(m @ m) * 0.5
  m = jax.lax.fori_loop(0, rounds, body, state["m"] + batch)
  return ({"m": m, "step": state["step"] + 1},
          {"loss": jnp.mean(m), "m": m})


def slow_step(state, batch):
  return _slow_step(state, batch, 60)


def _state():
  return {"m": jnp.full((384, 384), 0.01, jnp.float32),
          "step": jnp.array(0, jnp.int32)}


def _ready_by_step(step, state):
  """Runs ``step`` to its stop; for each step, whether the call returned
  with the step's outputs already computed (it waited for the device)."""
  ready = {}
  stop = False
  while not stop:
    state, outputs, stop = step(state, 0.0)
    ready[step.step] = outputs["m"].is_ready()
  step.end(state)
  return ready


def test_non_trigger_steps_return_before_the_device_finishes():
  log_hook = jh.LoggingTensorHook(["loss"], every_n_iter=4)
  hooks = [jh.StopAtStepHook(last_step=8), log_hook,
           jh.StepCounterHook(every_n_steps=4),
           jh.FinalOpsHook(lambda s: jnp.sum(s["m"]))]
  step = jh.wrap(slow_step, hooks=hooks)
  state = step.begin(_state())
  jax.block_until_ready(slow_step(state, 0.0))  # compile outside the check
  ready = _ready_by_step(step, state)
  # StepCounterHook reads the step at step 1 (its baseline), 4 and 8; the
  # logger at 4 and 8: those steps wait for the device, no other does.
  assert ready == {1: True, 2: False, 3: False, 4: True, 5: False, 6: False,
                   7: False, 8: True}


def test_the_standard_hook_set_waits_for_the_device_only_on_its_steps(
    tmp_path):
  # Stop, logging and step rate every 4 steps, the NaN check, async
  # checkpoints every 8 steps: only steps 1 (the rate's baseline), 4 and 8
  # wait for the device.
  hooks = [jh.StopAtStepHook(last_step=10),
           jh.LoggingTensorHook(["loss"], every_n_iter=4),
           jh.StepCounterHook(every_n_steps=4), jh.NanTensorHook("loss"),
           jh.CheckpointSaverHook(tmp_path, save_steps=8)]
  step = jh.wrap(slow_step, hooks=hooks)
  state = step.begin(_state())
  state, outputs, _ = step(state, 0.0)      # compiles
  jax.block_until_ready(outputs)
  assert _ready_by_step(step, state) == {2: False, 3: False, 4: True, 5: False, 6: False,
                   7: False, 8: True, 9: False, 10: False}


def test_device_reads_happen_only_on_trigger_steps(monkeypatch):
  reads = []
  real = jax.device_get
  step = jh.wrap(slow_step, hooks=[
      jh.LoggingTensorHook(["loss"], every_n_iter=3),
      jh.NanTensorHook("loss", every_n_iter=3),
      jh.StopAtStepHook(last_step=7)])
  state = step.begin(_state())
  monkeypatch.setattr(jax, "device_get",
                      lambda x: reads.append(step.step + 1) or real(x))
  stop = False
  while not stop:
    state, _, stop = step(state, 0.0)
  assert reads == [3, 6]


def test_no_recompile_after_the_first_step():
  step_fn = jax.jit(lambda s, b: ({"w": s["w"] * 0.9 + b, "step": s["step"] + 1},
                                  {"loss": jnp.sum(s["w"])}))
  hooks = [jh.StopAtStepHook(last_step=30),
           jh.LoggingTensorHook(["loss"], every_n_iter=7),
           jh.StepCounterHook(every_n_steps=5), jh.NanTensorHook("loss")]
  step = jh.wrap(step_fn, hooks=hooks)
  state = step.begin({"w": jnp.ones(3), "step": jnp.array(0)})
  batch = jnp.zeros(3)
  state, _, _ = step(state, batch)
  with count_compiles() as compiles:
    stop = False
    while not stop:
      state, _, stop = step(state, batch)
    step.end(state)
  assert compiles[0] == 0
