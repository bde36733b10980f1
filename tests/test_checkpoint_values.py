"""The values a checkpoint holds and gives back: best-metric retention with
NaN, hook states that restore a stopped run, dtypes, structures with empty
nodes, PRNG keys, foreign checkpoints, non-finite states at the end, and
clear errors for bad directories and states."""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxhooks as jh
from conftest import dict_state, dict_step


def train(hooks, state=None, *, train_step=dict_step, batch=None):
  """begin, run to stop, end; returns (final state, hooked step)."""
  step = jh.wrap(train_step, hooks=hooks)
  state = step.begin(dict_state() if state is None else state)
  batch = jnp.ones(2) if batch is None else batch
  while not step.should_stop:
    state, _, _ = step(state, batch)
  return step.end(state), step


def on_disk(path):
  return sorted(int(d) for d in os.listdir(path) if d.isdigit())


# -- 16: bad directories, states without a step, the agreed preemption log --


def test_an_empty_checkpoint_dir_is_a_value_error():
  for bad in ("", "  "):
    with pytest.raises(ValueError, match=r"^`checkpoint_dir` must name a "
                       f"directory, got '{bad}'\\.$"):
      jh.CheckpointSaverHook(bad)


@pytest.mark.parametrize("hooks", [
    [],                                                 # read at end()
    [jh.LoggingTensorHook(["loss"], every_n_iter=1)],   # a fetch
    [jh.NanTensorHook("loss", every_n_iter=1)],         # the step's program
])
def test_a_step_that_drops_the_step_names_what_it_read(hooks):
  dropped = jax.jit(lambda s, b: ({"w": s["w"] * 2}, {"loss": 1.0}))
  step = jh.wrap(dropped, hooks=[jh.StopAtStepHook(last_step=2), *hooks])
  state = step.begin(dict_state())
  with pytest.raises(TypeError) as info:
    while not step.should_stop:
      state, _, _ = step(state)
    step.end(state)
  assert str(info.value) == (
      "`state` has no step: `state['step']` raised KeyError: 'step'; the "
      "state is a dict with keys ['w']. `train_step` must return the state "
      "with its step, or pass `step_fn=` (a function returning the "
      "completed-update count of the state), e.g. `step_fn=lambda s: "
      "s['opt'].step` for a dict or Flax NNX state.")


def test_an_agreed_preemption_says_where_the_notice_came_from(tmp_path,
                                                              caplog):
  caplog.set_level(logging.WARNING, logger="jaxhooks")

  class Agreed(jh.Coordinator):
    check_every_n_steps = 5

    def agree_preemption_step(self, step, *, notified):
      return 5  # the notice came to another process

  step = jh.wrap(dict_step, hooks=[jh.CheckpointSaverHook(tmp_path)],
                 coord=Agreed())
  state = step.begin(dict_state())
  while not step.should_stop:
    state, _, _ = step(state, jnp.ones(2))
  step.end(state)
  assert step.step == 5 and on_disk(tmp_path) == [5]
  assert [r.getMessage() for r in caplog.records] == [
      "Preemption agreed with the other processes (the notice came to "
      "another one): saved step 5, stopping."]


# -- 4: a NaN metric never counts as better ---------------------------------


def scripted(losses):
  """A step whose loss at step s is losses[s - 1]."""
  table = jnp.asarray(losses, jnp.float32)
  return jax.jit(lambda s, b: ({**s, "step": s["step"] + 1},
                               {"loss": table[s["step"]]}))


@pytest.mark.parametrize("mode, sign", [("min", 1.0), ("max", -1.0)])
def test_best_metric_ranks_a_nan_metric_last(tmp_path, mode, sign):
  # Saved at steps 2, 4, ..., 12 with losses 5, 3, NaN, 4, 2, 6: the best two
  # are steps 10 (2) and 4 (3); 12 is the latest.
  losses = [0.0] * 12
  for s, loss in zip(range(2, 13, 2), [5, 3, np.nan, 4, 2, 6]):
    losses[s - 1] = sign * loss
  train([jh.StopAtStepHook(last_step=12),
         jh.CheckpointSaverHook(tmp_path, save_steps=2, max_to_keep=2,
                                best_metric="loss", best_mode=mode)],
        train_step=scripted(losses))
  assert on_disk(tmp_path) == [4, 10, 12]
