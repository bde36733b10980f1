"""Failure paths of a multi-process job, on one process: the other process
is a key-value store that answers for it (tests/test_multiprocess.py runs
the same faults on real processes)."""

import json

import jax.numpy as jnp

import jaxhooks as jh
from conftest import dict_step, dict_state


class PeerStore:
  """A stand-in for the jax.distributed client whose process 1 arrives at
  every check with nothing to report."""

  def __init__(self):
    self.kv = {}

  def key_value_set(self, key, value, allow_overwrite=False):
    self.kv[key] = value

  def blocking_key_value_get(self, key, ms):
    if key.endswith("/1") and "/check/" in key:
      return self.kv.get(key, json.dumps(
          {"stop": [], "preempt": False, "due": []}))
    return self.kv[key]

  def key_value_try_get(self, key):
    return self.kv[key]

  def key_value_delete(self, key):
    self.kv.pop(key, None)


def two_process_coord(check_every, **kwargs):
  return jh.DistributedCoordinator(
      check_every_n_steps=check_every, client=PeerStore(), process_index=0,
      process_count=2, namespace="ns", **kwargs)


def fused_batches(step):
  return jnp.ones((step.steps_next_call, 2), jnp.float32)


def train_with_notice(tmp_path, *, notice_after, check_every=5,
                      steps_per_call=1):
  """Trains with process 1 silent; this process gets a preemption notice
  once its step reaches `notice_after`. Returns the calls' (start, end)
  steps, the saved steps and the last step."""
  saver = jh.CheckpointSaverHook(tmp_path / "ckpt", async_save=False)
  step = jh.wrap(dict_step, hooks=[jh.StopAtStepHook(last_step=30), saver],
                 coord=two_process_coord(check_every), steps_per_call=steps_per_call)
  state = step.begin(dict_state())
  calls, stop = [], False
  while not stop:
    if step.step >= notice_after and not saver.preemption_notice.received:
      saver.preemption_notice.notify()
    start = step.step
    batch = fused_batches(step) if steps_per_call > 1 else jnp.ones(2)
    state, _, stop = step(state, batch)
    calls.append((start, step.step))
  step.end(state)
  return calls, saver.all_steps(), step.step


def test_notice_just_before_a_check_step_saves_at_that_check(tmp_path):
  # Item 9: the notice arrives after step 9; the check of step 10 must
  # already carry it: every process saves step 10, not 15.
  calls, saved, last = train_with_notice(tmp_path, notice_after=9)
  assert last == 10 and saved == [10]
  assert calls == [(i, i + 1) for i in range(10)]


def test_a_local_notice_does_not_change_the_calls_of_a_fused_loop(tmp_path):
  # Item 7: with steps_per_call=4 the notice after step 4 must not cut this
  # process's calls to 1 step (the other process would run a 2-step call
  # and both would wait in the step's collectives): the calls are those of
  # a run without a notice, and the save is at the check step 10.
  calls, saved, last = train_with_notice(tmp_path, notice_after=4,
                                         check_every=10, steps_per_call=4)
  assert calls == [(0, 4), (4, 8), (8, 10)]
  assert last == 10 and saved == [10]
