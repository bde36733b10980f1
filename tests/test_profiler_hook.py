"""ProfilerHook: real jax.profiler traces of exactly the requested steps."""

import glob
import os

import jax
import pytest

import jaxhooks as jh
from jaxhooks import profiler_hook
from observability_util import FakeClock, FetchSpy, run, scripted_step, state_at

LOSSES = [float(k) for k in range(1, 21)]


def traced_steps(log_dir):
  """The step numbers of the step annotations in the window's one trace."""
  (path,) = glob.glob(os.path.join(log_dir, "plugins", "profile", "*",
                                   "*.xplane.pb"))
  steps = []
  for plane in jax.profiler.ProfileData.from_file(path).planes:
    for line in plane.lines:
      for event in line.events:
        if event.name == "train":
          steps.append(dict(event.stats)["step_num"])
  return sorted(steps)


def test_one_window_holds_exactly_the_requested_steps(tmp_path, monkeypatch):
  syncs = []
  real = profiler_hook.jax.block_until_ready
  monkeypatch.setattr(profiler_hook.jax, "block_until_ready",
                      lambda x: syncs.append(1) or real(x))
  spy = FetchSpy(monkeypatch)
  hook = jh.ProfilerHook(start_step=4, num_steps=3, output_dir=str(tmp_path))
  run(scripted_step(LOSSES), [jh.StopAtStepHook(last_step=10), hook])
  assert os.listdir(tmp_path) == ["step_4"]
  assert hook.traces == [(4, 6, str(tmp_path / "step_4"))]
  assert traced_steps(tmp_path / "step_4") == [4, 5, 6]
  # One wait before the window, one device read after its last step.
  assert (len(syncs), spy.calls) == (1, 1)
  assert not hook.tracing


def test_periodic_windows(tmp_path):
  hook = jh.ProfilerHook(save_steps=4, num_steps=2, output_dir=str(tmp_path))
  run(scripted_step(LOSSES), [jh.StopAtStepHook(last_step=10), hook])
  assert [(a, b) for a, b, _ in hook.traces] == [(4, 5), (8, 9)]
  assert sorted(os.listdir(tmp_path)) == ["step_4", "step_8"]
  assert traced_steps(tmp_path / "step_4") == [4, 5]
  assert traced_steps(tmp_path / "step_8") == [8, 9]


def test_time_windows_use_the_injected_clock(tmp_path):
  clock = FakeClock()
  tick = jh.LambdaHook(before_run=lambda ctx: clock.advance(1.0))
  hook = jh.ProfilerHook(save_secs=5, output_dir=str(tmp_path), clock=clock)
  run(scripted_step(LOSSES), [jh.StopAtStepHook(last_step=12), tick, hook])
  assert [(a, b) for a, b, _ in hook.traces] == [(1, 1), (6, 6), (11, 11)]


def test_window_cut_short_by_the_end_is_closed(tmp_path):
  hook = jh.ProfilerHook(start_step=8, num_steps=5, output_dir=str(tmp_path))
  run(scripted_step(LOSSES), [jh.StopAtStepHook(last_step=10), hook])
  assert [(a, b) for a, b, _ in hook.traces] == [(8, 10)]
  assert traced_steps(tmp_path / "step_8") == [8, 9, 10]


def test_window_closed_when_the_loop_fails(tmp_path):
  def boom(ctx, values):
    if ctx.step == 5:
      raise KeyError("boom")
  hook = jh.ProfilerHook(start_step=4, num_steps=3, output_dir=str(tmp_path))
  with pytest.raises(KeyError):
    run(scripted_step(LOSSES), [hook, jh.LambdaHook(after_run=boom)])
  # Step 5 ran (a hook failed after it): the trace ends there.
  assert [(a, b) for a, b, _ in hook.traces] == [(4, 5)]
  assert traced_steps(tmp_path / "step_4") == [4, 5]
  assert not hook.tracing


@pytest.mark.parametrize("kwargs, match", [
    (dict(output_dir="d"), "Exactly one of `save_steps`, `save_secs`"),
    (dict(save_steps=5, start_step=3, output_dir="d"), "Exactly one of"),
    (dict(save_steps=5), "`output_dir` must be a path, got None"),
    (dict(save_steps=2, num_steps=3, output_dir="d"),
     r"`num_steps` must be at most `save_steps` \(2\)"),
    (dict(start_step=0, output_dir="d"), "`start_step` must be an int >= 1"),
    (dict(start_step=2, num_steps=0, output_dir="d"), "`num_steps` must be"),
])
def test_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    jh.ProfilerHook(**kwargs)


def test_time_window_opened_between_other_hooks_steps_keeps_its_length(
    tmp_path):
  # Only the time trigger runs on the calls between the stop step: the
  # window it opens must still close after exactly num_steps steps.
  clock = FakeClock()
  hook = jh.ProfilerHook(save_secs=10, num_steps=3, output_dir=str(tmp_path),
                         clock=clock)
  step = jh.wrap(scripted_step(LOSSES), hooks=[jh.StopAtStepHook(last_step=30),
                                               hook])
  state = step.begin(state_at())
  while not step.should_stop:
    clock.advance(1.0)
    state, _, _ = step(state)
  step.end(state)
  assert [(a, b) for a, b, _ in hook.traces] == [(1, 3), (11, 13), (21, 23)]
