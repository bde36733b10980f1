"""Failure paths of a multi-process job, on one process: the other process
is a key-value store that answers for it (tests/test_multiprocess.py runs
the same faults on real processes)."""

import atexit
import json

import jax.numpy as jnp
import pytest

import jaxhooks as jh
from jaxhooks import watchdog
from _util import dict_step, dict_state


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


# -- the watchdog ---------------------------------------------------------


class BeatStore(dict):
  """The key-value store seen by the watchdogs of two processes."""

  def key_value_set(self, key, value, allow_overwrite=False):
    self[key] = value

  def key_value_try_get(self, key):
    return self[key]


def watchdog_pair(**kwargs):
  """The watchdogs of processes 0 and 1 on one store and one fake clock."""
  store, now, ended = BeatStore(), [0.0], []
  dogs = [watchdog.Watchdog(
      client=store, namespace="ns", process_index=i, process_count=2,
      timeout_secs=20, stall_timeout_secs=60, check_every_n_steps=100,
      clock=lambda: now[0], end=ended.append, **kwargs) for i in range(2)]
  return dogs, now, ended


def test_watchdog_ends_a_process_that_completes_no_step():
  # Item 6: process 1 is stuck after step 11 (its loop body); process 0
  # waits in the step's collectives. A step resets the stall clock.
  dogs, now, ended = watchdog_pair()
  steps = [10, 11]
  dogs[0].watch(lambda: steps[0])
  dogs[1].watch(lambda: steps[1])
  now[0] = 10.0
  assert dogs[0].poll() and dogs[1].poll()
  now[0], steps[0] = 50.0, 11        # process 0 completes step 11
  assert dogs[0].poll() and dogs[1].poll()
  now[0] = 60.0                      # 60 s without a step on process 1
  assert not dogs[1].poll() and dogs[0].poll()
  now[0] = 110.0
  assert not dogs[0].poll()
  first, second = ended
  assert isinstance(first, jh.StallError)
  assert (first.process, first.step, second.process, second.step) == (
      1, 11, 0, 11)
  assert str(first).startswith(
      "Process 1 made no progress for 60 s after step 11 "
      "(`stall_timeout_secs`=60): its main thread is in `")
  assert ". The other processes: process 0: step 11, in `" in str(first)
  assert ". The other processes: process 1: step 11, in `" in str(second)
  assert str(second).endswith(
      " (ended); ending the process instead of hanging.")


def test_process_0_ends_after_the_others():
  # Process 0 runs the coordination service: it ends once the other
  # process stopped beating (or ended), at most timeout_secs later.
  dogs, now, ended = watchdog_pair()
  dogs[0].watch(lambda: 3)
  dogs[1].watch(lambda: 3)
  assert dogs[1].poll()
  now[0] = 59.5
  assert dogs[1].poll()
  now[0] = 60.0
  assert dogs[0].poll() and ended == []   # process 1 still beats
  now[0] = 61.0
  assert dogs[0].poll() and ended == []
  assert not dogs[1].poll() and len(ended) == 1
  assert not dogs[0].poll() and [e.process for e in ended] == [1, 0]


def test_watchdog_calls_a_silent_peer_lost_unless_a_check_waits_for_it():
  # Item 8: process 1's beats stop at t=5 (SIGKILL); process 0 waits in the
  # step's collectives: lost after timeout_secs=20 without a beat.
  dogs, now, ended = watchdog_pair()
  dogs[0].watch(lambda: 8)
  dogs[1].watch(lambda: 6)
  now[0] = 5.0
  assert dogs[1].poll() and dogs[0].poll()
  dogs[0].in_check = True            # the check's own deadline applies
  now[0] = 25.0
  assert dogs[0].poll() and ended == []
  dogs[0].in_check = False
  assert not dogs[0].poll()
  (error,) = ended
  assert isinstance(error, jh.CoordinationTimeoutError)
  assert (error.step, error.process) == (100, 1)
  assert str(error).startswith(
      "Process 1 did not arrive at the check of step 100 within 20 s (no "
      "heartbeat from it since its step 6; this process is at step 8, its "
      "main thread in `")


def test_watchdog_ignores_a_peer_whose_loop_ended():
  dogs, now, ended = watchdog_pair()
  running = [True]
  dogs[0].watch(lambda: 30)
  dogs[1].watch(lambda: 30 if running[0] else None)
  assert dogs[1].poll()
  running[0] = False
  assert not dogs[1].poll()          # publishes that it is done and stops
  now[0] = 59.0
  assert dogs[0].poll() and ended == []


def test_watchdog_ends_a_process_that_does_not_exit_after_a_lost_peer():
  # Item 8: after a check raised, the process exits at interpreter exit
  # (see tests/test_multiprocess.py) and at the latest timeout_secs later.
  dogs, now, ended = watchdog_pair()
  steps = [9]
  dogs[0].watch(lambda: steps[0])
  steps[0] = None                    # the loop ended with the error
  error = jh.CoordinationTimeoutError(10, 1, 20.0)
  try:
    dogs[0].peer_lost(error)
    assert dogs[0].lost is error and dogs[0].poll()
    now[0] = 20.0
    assert not dogs[0].poll()
  finally:
    atexit.unregister(watchdog.exit_now)
  assert str(ended[0]).startswith(
      "Process 0 made no progress for 20 s after step 9 (`timeout_secs`"
      f"=20) since a check raised: {error} The process did not exit: its "
      "main thread is in `")


def test_a_check_that_times_out_arms_the_exit(tmp_path):
  class Silent(PeerStore):
    def blocking_key_value_get(self, key, ms):
      raise RuntimeError("DEADLINE_EXCEEDED: key not found")

  coord = jh.DistributedCoordinator(
      check_every_n_steps=5, timeout_secs=3, client=Silent(),
      process_index=0, process_count=2, namespace="ns")
  try:
    with pytest.raises(jh.CoordinationTimeoutError,
                       match="Process 1 did not arrive at the check of step "
                             "5 within 3 s .DEADLINE_EXCEEDED") as info:
      coord.check(5)
  finally:
    atexit.unregister(watchdog.exit_now)
  assert coord.watchdog.lost is info.value
  assert not coord.watchdog.in_check


class Process0Due(PeerStore):
  """Process 0 said at every check that its time timers are due."""

  def blocking_key_value_get(self, key, ms):
    if key.endswith("/0") and "/check/" in key:
      return json.dumps({"stop": [], "preempt": False, "due": [True]})
    return super().blocking_key_value_get(key, ms)


def test_time_timers_are_shared_as_the_hooks_declare_them(clock):
  class TimersInAList(jh.SessionRunHook):   # not an attribute of its own
    def __init__(self):
      self.held = [jh.SecondOrStepTimer(every_secs=60, clock=clock)]
    def timers(self):
      return tuple(self.held)
  class Undeclared(jh.SessionRunHook):
    def __init__(self):
      self._timer = jh.SecondOrStepTimer(every_secs=60, clock=clock)
  declared, undeclared = TimersInAList(), Undeclared()
  coord = jh.DistributedCoordinator(
      check_every_n_steps=10, client=Process0Due(), process_index=1,
      process_count=2, namespace="ns")
  coord.bind([declared, undeclared])
  coord.check(10)
  shared, own = declared.held[0], undeclared._timer
  # Process 0 decides the declared timer: at the check step, never between.
  assert [shared.should_trigger_for_step(s) for s in (10, 11)] == [True, False]
  # The undeclared one follows this process's clock (first call: due).
  assert [own.should_trigger_for_step(s) for s in (10, 11)] == [True, True]


def test_timers_must_be_timers():
  class Wrong(jh.SessionRunHook):
    def timers(self):
      return (60,)
  coord = jh.DistributedCoordinator(
      check_every_n_steps=10, client=PeerStore(), process_index=1,
      process_count=2, namespace="ns")
  with pytest.raises(TypeError, match=r"`Wrong.timers\(\)` must return "
                     "SecondOrStepTimer objects, got 60."):
    coord.bind([Wrong()])


def test_every_built_in_timed_hook_declares_its_timer(tmp_path):
  hooks = [jh.LoggingTensorHook(["loss"], every_n_secs=5),
           jh.StepCounterHook(every_n_secs=5),
           jh.SummarySaverHook(save_secs=5, output_dir=tmp_path / "s"),
           jh.NanTensorHook("loss", every_n_iter=5),
           jh.EarlyStoppingHook("loss", every_n_iter=5),
           jh.ProfilerHook(save_secs=5, output_dir=tmp_path / "p"),
           jh.CheckpointSaverHook(tmp_path / "c", save_secs=5)]
  assert [len(h.timers()) for h in hooks] == [1] * len(hooks)
  assert jh.StopAtStepHook(last_step=3).timers() == ()


def test_a_loop_that_ended_stops_its_watchdog_thread_before_the_exit():
  """The thread is joined when the session ends, after telling the other
  processes: the interpreter's exit never cuts it inside a runtime call."""
  (dog, _), _, ended = watchdog_pair(poll_secs=3600)   # it would sleep on
  step = [5]
  dog.watch(lambda: step[0], thread=True)
  thread = dog._thread
  assert thread is not None and thread.is_alive()
  step[0] = None                # the loop ended
  dog.stop()
  assert not thread.is_alive() and ended == []
  assert json.loads(dog._client["ns/beat/0"])["done"] is True
