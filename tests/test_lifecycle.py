"""Call order, stop semantics and the end/exception rules (DESIGN.md 2)."""

import jax
import jax.numpy as jnp
import pytest

import jaxhooks as jh
from _util import Recorder, dict_state, dict_step, run_loop


def test_exact_call_order_and_every_after_run_runs_after_a_stop_request():
  log = []
  a = Recorder("a", log, stop_at=2)  # requests stop at step 2
  b = Recorder("b", log)
  step = jh.wrap(dict_step, hooks=[a, b])
  state, calls = run_loop(step, dict_state())
  assert calls == 2
  assert log == [
      ("a", "begin"), ("b", "begin"),
      ("a", "after_create_session", 0), ("b", "after_create_session", 0),
      ("a", "before_run", 1), ("b", "before_run", 1),
      ("a", "after_run", 1), ("b", "after_run", 1),
      ("a", "before_run", 2), ("b", "before_run", 2),
      ("a", "after_run", 2), ("b", "after_run", 2),
      ("a", "end", 2), ("b", "end", 2),
  ]
  assert int(state["step"]) == 2


def test_after_run_returning_true_stops():
  hook = jh.LambdaHook(after_run=lambda ctx, vals: ctx.step == 3)
  step = jh.wrap(dict_step, hooks=[hook])
  _, calls = run_loop(step, dict_state())
  assert calls == 3
  assert step.coord.stop_reasons == ("a hook requested stop at step 3",)


def test_stop_is_sticky_and_a_call_after_stop_raises():
  step = jh.wrap(dict_step, hooks=[jh.StopAtStepHook(last_step=1)])
  state = step.begin(dict_state())
  state, _, stop = step(state, jnp.ones(2))
  assert stop and step.should_stop
  with pytest.raises(jh.LifecycleError,
                     match=r"called after stop \(at step 1\)"):
    step(state, jnp.ones(2))
  assert step.should_stop
  assert isinstance(jh.LifecycleError("x"), RuntimeError)


def test_call_before_begin_and_after_end_raise():
  step = jh.wrap(dict_step)
  with pytest.raises(jh.LifecycleError, match=r"before `begin\(state\)`"):
    step(dict_state(), jnp.ones(2))
  with pytest.raises(jh.LifecycleError, match="ended before"):
    step.end(dict_state())
  state = step.begin(dict_state())
  with pytest.raises(jh.LifecycleError, match="already called"):
    step.begin(state)
  state, _, _ = step(state, jnp.ones(2))
  step.end(state)
  with pytest.raises(jh.LifecycleError, match="after `end`"):
    step(state, jnp.ones(2))


def test_stop_iteration_from_a_feed_skips_after_run_and_end_still_runs():
  log = []
  batches = iter([jnp.ones(2)] * 2)
  rec = Recorder("r", log)
  step = jh.wrap(dict_step,
                 hooks=[rec, jh.FeedFnHook(lambda: next(batches))])
  state = step.begin(dict_state())
  outs = []
  stop = False
  while not stop:
    state, outputs, stop = step(state)
    outs.append(outputs)
  assert outs[-1] is None and len(outs) == 3
  step.end(state)
  assert [e for e in log if e[1] != "begin"] == [
      ("r", "after_create_session", 0),
      ("r", "before_run", 1), ("r", "after_run", 1),
      ("r", "before_run", 2), ("r", "after_run", 2),
      ("r", "before_run", 3),  # the feed ran dry: no after_run for step 3
      ("r", "end", 2),
  ]


def test_stop_iteration_raised_by_the_step_itself_ends_cleanly():
  log = []
  def train_step(state, batch):
    if batch is None:
      raise StopIteration
    return dict_step(state, batch)
  step = jh.wrap(train_step, hooks=[Recorder("r", log)])
  state = step.begin(dict_state())
  state, _, _ = step(state, jnp.ones(2))
  state2, outputs, stop = step(state, None)
  assert (outputs, stop, state2 is state) == (None, True, True)
  step.end(state)
  assert log[-2:] == [("r", "before_run", 2), ("r", "end", 1)]


def test_an_error_of_the_step_fails_the_call_and_the_session_goes_on():
  log = []
  def train_step(state, batch):
    if batch is None:
      raise ValueError("bad batch")
    return dict_step(state, batch)
  step = jh.wrap(train_step, hooks=[Recorder("r", log)])
  state = step.begin(dict_state())
  for _ in range(2):
    state, _, _ = step(state, jnp.ones(2))
  with pytest.raises(ValueError, match="bad batch"):
    step(state, None)
  assert log[-1] == ("r", "before_run", 3)   # no after_run, no on_exception
  assert step.state is state and step.step == 2 and not step.should_stop
  state, _, _ = step(state, jnp.ones(2))     # a good batch: step 3
  step.end(state)
  assert log[-3:] == [("r", "before_run", 3), ("r", "after_run", 3),
                      ("r", "end", 3)]


def test_an_error_of_a_step_that_donated_its_state_ends_the_session():
  log = []
  donating = jax.jit(dict_step.__wrapped__, donate_argnums=0)
  def train_step(state, batch):
    new = donating(state, batch)
    if int(new[0]["step"]) == 2:
      raise ValueError("failed after the update")
    return new
  step = jh.wrap(train_step, hooks=[Recorder("r", log)])
  state, _, _ = step(step.begin(dict_state()), jnp.ones(2))
  with pytest.raises(ValueError, match="after the update"):
    step(state, jnp.ones(2))
  assert log[-1] == ("r", "on_exception", 1, "ValueError")
  with pytest.raises(jh.LifecycleError, match="after a failed step"):
    step.end(state)


def test_exception_in_after_run_keeps_the_input_state_as_last_good():
  def boom(ctx, vals):
    if ctx.step == 2:
      raise KeyError("hook failure")
  log = []
  step = jh.wrap(dict_step, hooks=[jh.LambdaHook(after_run=boom),
                                   Recorder("r", log)])
  state = step.begin(dict_state())
  state1, _, _ = step(state, jnp.ones(2))
  with pytest.raises(KeyError):
    step(state1, jnp.ones(2))
  assert log[-1] == ("r", "on_exception", 1, "KeyError")  # input of step 2


def test_monitored_session_stop_iteration_from_data_runs_end():
  log = []
  batches = iter([jnp.ones(2)] * 3)
  with jh.MonitoredTrainingSession(
      dict_step, dict_state(), hooks=[Recorder("r", log)],
      log_step_count_steps=0) as sess:
    while not sess.should_stop():
      sess.run(next(batches))
  assert int(sess.state["step"]) == 3
  assert log[-1] == ("r", "end", 3)


def test_monitored_session_other_exception_propagates_without_end():
  log = []
  with pytest.raises(ZeroDivisionError):
    with jh.MonitoredTrainingSession(
        dict_step, dict_state(), hooks=[Recorder("r", log)],
        log_step_count_steps=0) as sess:
      sess.run(jnp.ones(2))
      1 / 0
  assert log[-1] == ("r", "on_exception", 1, "ZeroDivisionError")
  assert not any(e[1] == "end" for e in log)


def test_monitored_session_stops_at_step_and_refuses_to_run_after():
  with jh.MonitoredTrainingSession(
      dict_step, dict_state(5), log_step_count_steps=0,
      hooks=[jh.StopAtStepHook(num_steps=3)]) as sess:
    n = 0
    while not sess.should_stop():
      sess.run(jnp.ones(2))
      n += 1
    with pytest.raises(jh.LifecycleError):
      sess.run(jnp.ones(2))
  assert n == 3 and sess.global_step == 8


def test_chief_only_hooks_and_primary_only_hooks_skip_other_processes():
  log = []
  coord = jh.Coordinator(process_index=1, process_count=2)
  chief = Recorder("chief", log)
  logger = jh.LoggingTensorHook(["loss"], every_n_iter=1)
  sess = jh.MonitoredTrainingSession(
      dict_step, dict_state(), hooks=[logger], chief_only_hooks=[chief],
      coord=coord)
  assert sess.hooks == ()
  sess0 = jh.MonitoredTrainingSession(
      dict_step, dict_state(), hooks=[logger], chief_only_hooks=[chief],
      log_step_count_steps=0)
  assert sess0.hooks == (logger, chief)


def test_hooks_argument_is_checked():
  with pytest.raises(TypeError, match=r"`hooks\[1\]` must be a jaxhooks"):
    jh.wrap(dict_step, hooks=[jh.StopAtStepHook(last_step=1), object()])
  with pytest.raises(TypeError, match="got a single"):
    jh.wrap(dict_step, hooks=jh.StopAtStepHook(last_step=1))
  with pytest.raises(TypeError, match="`train_step` must be callable"):
    jh.wrap(3)
