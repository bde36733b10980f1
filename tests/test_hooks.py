"""Built-in hooks: exact log lines, rates, NaN checks, final ops, feeds."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxhooks as jh
from _util import FakeClock, Recorder, dict_state, dict_step, run_loop


def _w0(k):
  """w[0] after k steps, in the float32 arithmetic of dict_step."""
  w = np.float32(1.0)
  for _ in range(k):
    w = np.float32(w - np.float32(0.1))
  return w


def _messages(caplog):
  return [r.getMessage() for r in caplog.records if r.name == "jaxhooks"]


def test_logging_tensor_hook_every_n_iter_logs_exact_lines(caplog, clock):
  caplog.set_level(logging.INFO, logger="jaxhooks")
  def ticking_step(state, batch):
    clock.advance(0.5)
    return dict_step(state, batch)
  hook = jh.LoggingTensorHook({"w0": "w0", "step": jh.GLOBAL_STEP},
                              every_n_iter=2, clock=clock)
  step = jh.wrap(ticking_step, hooks=[jh.StopAtStepHook(last_step=5), hook])
  run_loop(step, dict_state())
  assert _messages(caplog) == [
      f"w0 = {_w0(2)}, step = 2",
      f"w0 = {_w0(4)}, step = 4 (1.000 sec)",
  ]


def test_logging_tensor_hook_every_n_secs_and_at_end(caplog, clock):
  caplog.set_level(logging.INFO, logger="jaxhooks")
  def ticking_step(state, batch):
    clock.advance(1.0)
    return dict_step(state, batch)
  hook = jh.LoggingTensorHook(["w0"], every_n_secs=2.5, at_end=True,
                              clock=clock)
  step = jh.wrap(ticking_step, hooks=[jh.StopAtStepHook(last_step=6), hook])
  run_loop(step, dict_state())
  # Decided in before_run: step 1 (t=0) fires; its after_run at t=1 is the
  # mark; step 5 starts at t=4, 3 s later, and fires; its after_run is at
  # t=5. at_end logs the final value, without elapsed time.
  assert _messages(caplog) == [
      f"w0 = {_w0(1)}",
      f"w0 = {_w0(5)} (4.000 sec)",
      f"w0 = {_w0(6)}",
  ]


def test_logging_tensor_hook_at_end_only_and_formatter(caplog):
  caplog.set_level(logging.INFO, logger="jaxhooks")
  hook = jh.LoggingTensorHook(
      ["loss"], at_end=True,
      formatter=lambda v: f"final loss {v['loss']:.4f}")
  step = jh.wrap(dict_step, hooks=[jh.StopAtStepHook(last_step=3), hook])
  run_loop(step, dict_state())
  assert _messages(caplog) == ["final loss 3.3800"]



@jax.jit
def tuple_step(state, batch):
  """An NNX-like state: (params, {"step": ...}); no `.step`, no "step" key."""
  w, counters = state
  w = w - 0.1 * batch
  return (w, {"step": counters["step"] + 1}), {"w0": w[0]}


def test_at_end_global_step_uses_the_host_step_not_state_step(caplog):
  caplog.set_level(logging.INFO, logger="jaxhooks")
  hook = jh.LoggingTensorHook({"step": jh.GLOBAL_STEP, "w0": "w0"},
                              every_n_iter=2, at_end=True)
  step = jh.wrap(tuple_step, hooks=[jh.StopAtStepHook(last_step=3), hook],
                 step_fn=lambda s: s[1]["step"])
  state, _ = run_loop(step, (jnp.asarray([1.0, 2.0]),
                             {"step": jnp.asarray(0, jnp.int32)}))
  assert int(state[1]["step"]) == 3
  assert _messages(caplog) == [f"step = 2, w0 = {_w0(2)}",
                               f"step = 3, w0 = {_w0(3)}"]

def test_logging_tensor_hook_bad_tensors():
  with pytest.raises(ValueError, match=r"`tensors` must name at least one"):
    jh.LoggingTensorHook([], every_n_iter=1)
  with pytest.raises(TypeError, match=r"`tensors\['x'\]` must be an output"):
    jh.LoggingTensorHook({"x": 3}, every_n_iter=1)
  with pytest.raises(ValueError, match="`formatter` must be callable"):
    jh.LoggingTensorHook(["loss"], every_n_iter=1, formatter="{}")


def test_unknown_output_name_is_a_clear_error():
  step = jh.wrap(dict_step, hooks=[jh.LoggingTensorHook(["acc"], every_n_iter=1)])
  state = step.begin(dict_state())
  with pytest.raises(ValueError, match=r"fetches the output 'acc', which the "
                                       r"step does not return; `outputs` has "
                                       r"keys \['loss', 'w0'\]"):
    step(state, jnp.ones(2))


def test_step_counter_reports_exact_rate_with_fake_clock(caplog, clock):
  caplog.set_level(logging.INFO, logger="jaxhooks")
  def ticking_step(state, batch):
    clock.advance(0.25)
    return dict_step(state, batch)
  written = []
  class Writer:
    def write_scalars(self, step, scalars):
      written.append((step, scalars))
    def flush(self):
      written.append("flush")
    def close(self):
      written.append("close")
  hook = jh.StepCounterHook(every_n_steps=4, clock=clock, writer=Writer())
  step = jh.wrap(ticking_step, hooks=[jh.StopAtStepHook(last_step=9), hook])
  run_loop(step, dict_state())
  # Baseline at step 1, reports at 4 (3 steps in 0.75 s) and 8 (4 in 1 s).
  assert _messages(caplog) == ["global_step/sec: 4", "global_step/sec: 4"]
  assert written == [(4, {"global_step/sec": 4.0}), (8, {"global_step/sec": 4.0}),
                     "flush"]   # a given writer is flushed, not closed


def test_step_counter_every_n_secs_replaces_the_step_default(clock):
  hook = jh.StepCounterHook(every_n_secs=10, clock=clock)
  assert hook.timer.every_secs == 10.0 and hook.timer.every_steps is None


def test_nan_tensor_hook_raises_with_the_exact_step():
  @jax.jit
  def step_fn(state, batch):
    new, out = dict_step(state, batch)
    bad = jnp.where(new["step"] >= 4, jnp.nan, out["loss"])
    return new, {"loss": bad}
  log = []
  step = jh.wrap(step_fn, hooks=[jh.NanTensorHook("loss", every_n_iter=1),
                                 Recorder("r", log)])
  state = step.begin(dict_state())
  with pytest.raises(jh.NanLossDuringTrainingError) as info:
    for _ in range(10):
      state, _, _ = step(state, jnp.ones(2))
  assert info.value.step == 4
  assert str(info.value) == "NaN loss during training: `loss` was nan at step 4."
  assert isinstance(info.value, RuntimeError)
  assert log[-1] == ("r", "on_exception", 3, "NanLossDuringTrainingError")
  assert int(step.state["step"]) == 3  # the last finite state


def test_nan_tensor_hook_without_fail_stops_on_inf(caplog):
  caplog.set_level(logging.WARNING, logger="jaxhooks")
  @jax.jit
  def step_fn(state, batch):
    new, out = dict_step(state, batch)
    return new, {"loss": jnp.where(new["step"] == 2, jnp.inf, out["loss"])}
  step = jh.wrap(step_fn, hooks=[jh.NanTensorHook(
      "loss", fail_on_nan_loss=False, every_n_iter=1)])
  _, calls = run_loop(step, dict_state())
  assert calls == 2
  assert _messages(caplog) == ["Model diverged with loss = inf at step 2; stopping."]


def _nan_from(first_bad):
  @jax.jit
  def step_fn(state, batch):
    new, out = dict_step(state, batch)
    return new, {"loss": jnp.where(new["step"] >= first_bad, jnp.nan,
                                   out["loss"])}
  return step_fn


@pytest.mark.parametrize("every, noticed", [(None, 10), (3, 6), (5, 5)])
def test_nan_sentinel_names_the_first_bad_step_when_noticed_later(every,
                                                                  noticed):
  log = []
  step = jh.wrap(_nan_from(4), hooks=[
      jh.NanTensorHook("loss", every_n_iter=every), Recorder("r", log)])
  state = step.begin(dict_state())
  with pytest.raises(jh.NanLossDuringTrainingError) as info:
    for _ in range(10):
      state, _, _ = step(state, jnp.ones(2))
    step.end(state)
  assert str(info.value) == "NaN loss during training: `loss` was nan at step 4."
  # Noticed at the first read after step 4 (in `end` without every_n_iter):
  # no after_run of that step and no end ran.
  last_good = noticed if every is None else noticed - 1
  assert log[-1] == ("r", "on_exception", last_good,
                     "NanLossDuringTrainingError")
  assert ("r", "after_run", last_good) in log
  assert ("r", "after_run", last_good + 1) not in log
  assert ("r", "end", 10) not in log


def test_nan_sentinel_rides_on_other_hooks_reads(caplog):
  caplog.set_level(logging.WARNING, logger="jaxhooks")
  step = jh.wrap(_nan_from(3), hooks=[
      jh.NanTensorHook("loss", fail_on_nan_loss=False),
      jh.LoggingTensorHook(["loss"], every_n_iter=4),
      jh.StopAtStepHook(last_step=20)])
  _, calls = run_loop(step, dict_state())
  assert calls == 4   # the logger's read at step 4 shows the NaN of step 3
  assert _messages(caplog)[-1] == (
      "Model diverged with loss = nan at step 3 (noticed at step 4); "
      "stopping.")


def test_nan_sentinel_names_a_missing_loss_output():
  step = jh.wrap(dict_step, hooks=[jh.NanTensorHook("xent")])
  state = step.begin(dict_state())
  with pytest.raises(ValueError, match=r"fetches the output 'xent', which "
                     r"the step does not return; `outputs` has keys "
                     r"\['loss', 'w0'\]"):
    step(state, jnp.ones(2))


def test_nan_tensor_hook_bad_name():
  with pytest.raises(ValueError, match=r"`loss_name` must be the name of an "
                                       r"output, got 3"):
    jh.NanTensorHook(3)


def test_final_ops_hook_reads_functions_of_the_final_state():
  hook = jh.FinalOpsHook({"w": lambda s: s["w"],
                          "loss": lambda s, out: out["loss"]})
  step = jh.wrap(dict_step, hooks=[jh.StopAtStepHook(last_step=2), hook])
  run_loop(step, dict_state())
  w = hook.final_ops_values["w"]
  assert w.dtype == np.float32 and w[0] == _w0(2)
  assert hook.final_ops_values["loss"] == np.sum(np.square(w))
  with pytest.raises(ValueError, match="`final_ops` must be a function"):
    jh.FinalOpsHook([1, 2])
  with pytest.raises(ValueError, match="`final_ops_feed_dict` has no meaning"):
    jh.FinalOpsHook(lambda s: s, final_ops_feed_dict={"x": 1})


def test_feed_fn_merges_into_a_dict_batch_and_rejects_double_feeds():
  @jax.jit
  def step_fn(state, batch):
    return dict_step(state, batch["x"] * batch["scale"])
  step = jh.wrap(step_fn, hooks=[jh.FeedFnHook(lambda: {"scale": 2.0})])
  state = step.begin(dict_state())
  state, _, _ = step(state, {"x": jnp.ones(2)})
  np.testing.assert_allclose(state["w"], [0.8, 1.8])
  with pytest.raises(ValueError, match=r"`feed_dict` keys \['scale'\] are fed "
                                       r"twice"):
    step(state, {"x": jnp.ones(2), "scale": 1.0})
  step2 = jh.wrap(dict_step, hooks=[jh.FeedFnHook(lambda: jnp.ones(2))])
  state = step2.begin(dict_state())
  with pytest.raises(TypeError, match="can only be merged into a dict batch"):
    step2(state, jnp.ones(2))
  with pytest.raises(ValueError, match="`feed_fn` must be callable"):
    jh.FeedFnHook(None)


def test_lambda_hook_calls_every_function_in_order():
  log = []
  hook = jh.LambdaHook(
      begin=lambda: log.append("begin"),
      after_create_session=lambda s, c: log.append(("create", s.step)),
      before_run=lambda ctx: log.append(("before", ctx.step)),
      after_run=lambda ctx, v: log.append(("after", ctx.step)),
      end=lambda s: log.append(("end", s.step)))
  run_loop(jh.wrap(dict_step, hooks=[hook, jh.StopAtStepHook(last_step=1)]),
           dict_state())
  assert log == ["begin", ("create", 0), ("before", 1), ("after", 1), ("end", 1)]
  with pytest.raises(ValueError, match="`end` must be callable or None, got 5"):
    jh.LambdaHook(end=5)


def test_all_fetches_of_a_step_are_read_in_one_device_get(monkeypatch):
  calls = []
  real = jax.device_get
  def counting(x):
    calls.append(x)
    return real(x)
  log = []
  hooks = [Recorder("a", log, fetches="loss"),
           Recorder("b", log, fetches={"s": jh.GLOBAL_STEP,
                                       "n": lambda st, out: jnp.sum(st["w"])}),
           Recorder("c", log)]
  step = jh.wrap(dict_step, hooks=hooks)
  state = step.begin(dict_state())
  monkeypatch.setattr(jax, "device_get", counting)
  state, _, _ = step(state, jnp.ones(2))
  assert len(calls) == 1
  assert hooks[0].values == [np.float32(0.9 ** 2 + 1.9 ** 2)]
  assert hooks[1].values[0]["s"] == 1
  assert hooks[1].values[0]["n"] == np.float32(0.9) + np.float32(1.9)
  assert hooks[2].values == [None]
