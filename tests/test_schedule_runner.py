"""Which calls run hooks: the runner's quiet path, time-triggered hooks'
due(), and a woken coordinator."""

import jax
import pytest
import jax.numpy as jnp

import jaxhooks as jh


@jax.jit
def count_step(state, batch):
  return {"step": state["step"] + 1}, {"x": state["step"]}


class Record(jh.Hook):
  """Records the step of every before_run; its next step of interest and
  due() are set by the test."""

  def __init__(self, interest):
    self.interest = interest    # callable step -> next step, or None
    self.is_due = False
    self.calls = []

  def next_step_of_interest(self, step):
    return self.interest(step)

  def due(self):
    return self.is_due

  def before_run(self, run_context):
    self.calls.append(run_context.step)
    return None


def run(hooks, steps, between=None):
  step = jh.wrap(count_step, hooks=hooks)
  state = step.begin({"step": jnp.array(0)})
  for _ in range(steps):
    state, _, _ = step(state)
    if between is not None:
      between(step)
  return step


def test_a_hook_that_wants_nothing_runs_on_the_first_call_only():
  never = Record(lambda step: jh.NEVER)
  run([never], 20)
  assert never.calls == [1]


def test_calls_reach_each_step_of_interest_and_no_other():
  every5 = Record(lambda step: (step // 5 + 1) * 5)
  run([every5], 17)
  assert every5.calls == [1, 5, 10, 15]


def test_a_time_hook_runs_only_on_calls_where_it_is_due():
  timed = Record(lambda step: None)
  other = Record(lambda step: jh.NEVER)

  def between(step):
    timed.is_due = step.step in (6, 7, 12)   # due for the calls to 7, 8, 13

  run([timed, other], 15, between)
  assert timed.calls == [1, 7, 8, 13]
  assert other.calls == [1]           # only due hooks run on those calls


def test_a_woken_coordinator_runs_every_hook_on_the_next_call_only():
  never = Record(lambda step: jh.NEVER)

  def between(step):
    if step.step in (4, 9):
      step.coord.wake()

  run([never], 12, between)
  assert never.calls == [1, 5, 10]


def test_quiet_calls_still_count_steps_and_return_the_new_state():
  never = Record(lambda step: jh.NEVER)
  step = run([never], 30)
  assert step.step == 30
  assert int(step.state["step"]) == 30


def test_a_stop_requested_between_quiet_calls_is_seen_by_the_next_call():
  never = Record(lambda step: jh.NEVER)
  step = run([never], 5)
  assert step.coord.awake is False      # the next call would be quiet
  step.coord.request_stop("the user's loop had enough")
  assert step.should_stop
  with pytest.raises(jh.LifecycleError, match="called"):
    step(step.state)
  assert step.step == 5 and never.calls == [1]


def test_a_failing_quiet_call_keeps_the_last_good_state():
  never = Record(lambda step: jh.NEVER)
  step = run([never], 3)
  good = step.state
  with pytest.raises(TypeError):
    step(good, "not a batch")          # fails inside the jitted step
  assert step.state is good and step.step == 3
  state, _, _ = step(good)              # the call failed, not the session
  assert step.step == 4
