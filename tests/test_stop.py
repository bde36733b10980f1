"""StopAtStepHook and GlobalStepWaiterHook: exact steps, bad arguments."""

import jax.numpy as jnp
import pytest
from hypothesis import given, settings, strategies as st

import jaxhooks as jh
from _util import Recorder, dict_state, dict_step, run_loop


@pytest.mark.parametrize("start,last,expected_calls", [
    (0, 7, 7), (5, 7, 2), (6, 7, 1), (7, 7, 0), (9, 7, 0), (0, 0, 0)])
def test_last_step_is_exact(start, last, expected_calls):
  log = []
  step = jh.wrap(dict_step, hooks=[jh.StopAtStepHook(last_step=last),
                                   Recorder("r", log)])
  state, calls = run_loop(step, dict_state(start))
  assert calls == expected_calls
  assert int(state["step"]) == max(start, last)
  assert log[-1] == ("r", "end", max(start, last))


@pytest.mark.parametrize("start,num", [(0, 5), (13, 5), (13, 0), (100, 1)])
def test_num_steps_counts_from_the_restored_step(start, num):
  hook = jh.StopAtStepHook(num_steps=num)
  step = jh.wrap(dict_step, hooks=[hook])
  state, calls = run_loop(step, dict_state(start))
  assert calls == num
  assert int(state["step"]) == start + num
  assert hook.last_step == start + num


def test_restored_step_past_the_target_runs_zero_steps_and_says_why():
  step = jh.wrap(dict_step, hooks=[jh.StopAtStepHook(last_step=3)])
  step.begin(dict_state(10))
  assert step.should_stop
  assert step.coord.stop_reasons == (
      "StopAtStepHook: restored step 10 is at or past last_step 3",)


@settings(max_examples=40, deadline=None)
@given(start=st.integers(0, 30), last=st.integers(0, 30))
def test_property_never_early_never_late(start, last):
  log = []
  step = jh.wrap(dict_step, hooks=[jh.StopAtStepHook(last_step=last),
                                   Recorder("r", log)])
  _, calls = run_loop(step, dict_state(start))
  steps = [e[2] for e in log if e[1] == "after_run"]
  assert steps == list(range(start + 1, last + 1))
  assert calls == max(0, last - start)


def test_num_steps_target_survives_a_restart_through_state_dict():
  first = jh.StopAtStepHook(num_steps=10)
  step = jh.wrap(dict_step, hooks=[first])
  state = step.begin(dict_state(0))
  for _ in range(4):
    state, _, _ = step(state, jnp.ones(2))
  saved = first.state_dict()
  assert saved == {"last_step": 10}
  again = jh.StopAtStepHook(num_steps=10)
  again.load_state_dict(saved)
  step2 = jh.wrap(dict_step, hooks=[again])
  _, calls = run_loop(step2, state)
  assert calls == 6 and again.last_step == 10
  assert jh.StopAtStepHook(last_step=4).state_dict() is None


@pytest.mark.parametrize("kwargs,match", [
    ({}, r"Exactly one of `num_steps` and `last_step` must be given, got "
         r"num_steps=None, last_step=None\."),
    ({"num_steps": 1, "last_step": 2}, "Exactly one of"),
    ({"num_steps": -1}, r"`num_steps` must be >= 0, got -1\."),
    ({"last_step": -5}, r"`last_step` must be >= 0, got -5\."),
    ({"last_step": 2.5}, r"`last_step` must be an int, got 2\.5\."),
    ({"num_steps": "10"}, r"`num_steps` must be an int, got '10'\."),
    ({"num_steps": True}, r"`num_steps` must be an int, got True\."),
])
def test_invalid_arguments_name_the_argument(kwargs, match):
  with pytest.raises(ValueError, match=match):
    jh.StopAtStepHook(**kwargs)


def test_global_step_waiter_polls_until_the_step_is_reached():
  seen = iter([3, 7, 12])
  sleeps = []
  hook = jh.GlobalStepWaiterHook(10, step_source=lambda: next(seen),
                                 sleep=sleeps.append, poll_secs=0.25)
  step = jh.wrap(dict_step, hooks=[hook, jh.StopAtStepHook(last_step=2)])
  _, calls = run_loop(step, dict_state())
  assert calls == 2
  assert sleeps == [0.25, 0.25]
  assert hook.waited_polls == 3


def test_global_step_waiter_does_not_wait_when_already_there():
  hook = jh.GlobalStepWaiterHook(5, step_source=lambda: pytest.fail("polled"))
  step = jh.wrap(dict_step, hooks=[hook, jh.StopAtStepHook(num_steps=2)])
  run_loop(step, dict_state(5))
  assert hook.waited_polls == 0


def test_global_step_waiter_times_out_with_the_step_it_saw(clock):
  def sleep(secs):
    clock.advance(secs)
  hook = jh.GlobalStepWaiterHook(10, step_source=lambda: 4, sleep=sleep,
                                 clock=clock, poll_secs=1.0, timeout_secs=3)
  step = jh.wrap(dict_step, hooks=[hook])
  state = step.begin(dict_state())
  with pytest.raises(TimeoutError) as info:
    step(state, jnp.ones(2))
  assert str(info.value) == ("GlobalStepWaiterHook: global step is 4 after "
                             "waiting `timeout_secs`=3 s for step 10.")


def test_global_step_waiter_in_one_process_refuses_to_hang():
  step = jh.wrap(dict_step, hooks=[jh.GlobalStepWaiterHook(10)])
  state = step.begin(dict_state())
  with pytest.raises(RuntimeError, match="would wait forever for step 10"):
    step(state, jnp.ones(2))


@pytest.mark.parametrize("kwargs,match", [
    ({"wait_until_step": -1}, r"`wait_until_step` must be >= 0, got -1\."),
    ({"wait_until_step": 1, "poll_secs": 0}, r"`poll_secs` must be positive, got 0\."),
    ({"wait_until_step": 1, "poll_secs": "1"},
     r"`poll_secs` must be a number, got '1'\."),
    ({"wait_until_step": 1, "timeout_secs": -2},
     r"`timeout_secs` must be positive or None, got -2\."),
])
def test_global_step_waiter_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    jh.GlobalStepWaiterHook(**kwargs)
