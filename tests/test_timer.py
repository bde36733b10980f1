"""SecondOrStepTimer: the one timer (step multiples, injected clocks)."""

import pytest
from hypothesis import given, settings, strategies as st

import jaxhooks as jh
from _util import FakeClock


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 50), start=st.integers(0, 500), length=st.integers(0, 200))
def test_step_timer_fires_exactly_on_multiples(n, start, length):
  timer = jh.SecondOrStepTimer(every_steps=n)
  fired = []
  for s in range(start + 1, start + length + 1):
    if timer.should_trigger_for_step(s):
      timer.update_last_triggered_step(s)
      fired.append(s)
  assert fired == [s for s in range(start + 1, start + length + 1) if s % n == 0]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 50), step=st.integers(0, 10_000))
def test_next_trigger_step_is_the_next_multiple(n, step):
  timer = jh.SecondOrStepTimer(every_steps=n)
  nxt = timer.next_trigger_step(step)
  assert nxt > step and nxt % n == 0 and nxt - step <= n
  assert all(not timer.should_trigger_for_step(s) for s in range(step + 1, nxt))


@settings(max_examples=60, deadline=None)
@given(period=st.floats(0.5, 100), gaps=st.lists(st.floats(0, 50), max_size=40))
def test_time_timer_fires_first_then_when_period_passed(period, gaps):
  clock = FakeClock(1000.0)
  timer = jh.SecondOrStepTimer(every_secs=period, clock=clock)
  last = None
  for i, gap in enumerate(gaps, start=1):
    clock.advance(gap)
    due = last is None or clock() - last >= period
    assert timer.should_trigger_for_step(i) == due
    if due:
      elapsed = timer.update_last_triggered_step(i)
      assert (elapsed == (None, None)) == (last is None)
      last = clock()
  assert timer.next_trigger_step(5) is None


def test_same_step_never_fires_twice_and_elapsed_is_exact():
  clock = FakeClock()
  timer = jh.SecondOrStepTimer(every_secs=1.0, clock=clock)
  assert timer.should_trigger_for_step(1)
  assert timer.update_last_triggered_step(1) == (None, None)
  clock.advance(5)
  assert not timer.should_trigger_for_step(1)
  assert timer.should_trigger_for_step(4)
  assert timer.update_last_triggered_step(4) == (5.0, 3)


def test_state_dict_round_trip_keeps_the_last_step_and_drops_time():
  clock = FakeClock()
  timer = jh.SecondOrStepTimer(every_steps=10, clock=clock)
  timer.update_last_triggered_step(30)
  restored = jh.SecondOrStepTimer(every_steps=10, clock=clock)
  restored.load_state_dict(timer.state_dict())
  assert restored.last_triggered_step() == 30
  assert not restored.should_trigger_for_step(30)
  assert restored.should_trigger_for_step(40)
  empty = jh.SecondOrStepTimer(every_secs=3)
  assert empty.state_dict() == {"last_step": -1}
  empty.load_state_dict({"last_step": -1})
  assert empty.last_triggered_step() is None


@pytest.mark.parametrize("kwargs,match", [
    ({}, r"Exactly one of `every_secs` and `every_steps` must be given, got "
         r"every_secs=None, every_steps=None\."),
    ({"every_secs": 1, "every_steps": 1}, "Exactly one of"),
    ({"every_steps": 0}, r"`every_steps` must be positive, got 0\."),
    ({"every_steps": 2.5}, r"`every_steps` must be a whole number, got 2\.5\."),
    ({"every_secs": -1.0}, r"`every_secs` must be positive, got -1\.0\."),
    ({"every_secs": "5"}, r"`every_secs` must be a number, got '5'\."),
    ({"every_secs": float("nan")}, r"`every_secs` must be positive, got nan\."),
])
def test_invalid_periods_name_the_argument(kwargs, match):
  with pytest.raises(ValueError, match=match):
    jh.SecondOrStepTimer(**kwargs)


def test_hook_argument_names_appear_in_errors():
  with pytest.raises(ValueError, match=r"`every_n_iter` must be positive, got -3"):
    jh.LoggingTensorHook(["loss"], every_n_iter=-3)
  with pytest.raises(ValueError, match="Exactly one of `every_n_secs` and "
                                       "`every_n_iter`"):
    jh.LoggingTensorHook(["loss"])
  with pytest.raises(ValueError, match=r"`every_n_steps` must be positive"):
    jh.StepCounterHook(every_n_steps=0)
