"""ProfilerHook: real jax.profiler traces of exactly the requested steps."""

import glob
import os

import jax
import pytest

import jaxhooks as jh
from jaxhooks import profiler_hook
from _util import FakeClock
from observability_util import FetchSpy, run, scripted_step, state_at

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
  # Not the first call (compilation); the seconds count from it (t=1).
  assert [(a, b) for a, b, _ in hook.traces] == [(6, 6), (11, 11)]


def test_periodic_windows_skip_the_first_call_as_tf_does(tmp_path):
  hook = jh.ProfilerHook(save_steps=1, output_dir=str(tmp_path))
  run(scripted_step(LOSSES), [jh.StopAtStepHook(last_step=3), hook])
  assert [(a, b) for a, b, _ in hook.traces] == [(2, 2), (3, 3)]
  # A restored session's first call is skipped too; an explicit
  # start_step is traced wherever it falls.
  again = jh.ProfilerHook(save_steps=5, output_dir=str(tmp_path / "b"))
  run(scripted_step(LOSSES), [jh.StopAtStepHook(last_step=10), again],
      state=state_at(4))
  first = jh.ProfilerHook(start_step=1, output_dir=str(tmp_path / "c"))
  run(scripted_step(LOSSES), [jh.StopAtStepHook(last_step=2), first])
  assert ([(a, b) for a, b, _ in again.traces],
          [(a, b) for a, b, _ in first.traces]) == ([(10, 10)], [(1, 1)])


def test_start_step_then_every_n_secs_in_one_hook(tmp_path):
  # CLU's "at step 3, then every 5 seconds": the seconds count from step 3.
  clock = FakeClock()
  tick = jh.LambdaHook(before_run=lambda ctx: clock.advance(1.0))
  hook = jh.ProfilerHook(start_step=3, save_secs=5, num_steps=2,
                         output_dir=str(tmp_path), clock=clock)
  run(scripted_step(LOSSES), [jh.StopAtStepHook(last_step=14), tick, hook])
  assert [(a, b) for a, b, _ in hook.traces] == [(3, 4), (8, 9), (13, 14)]
  assert traced_steps(tmp_path / "step_8") == [8, 9]


def test_start_step_then_every_n_steps_in_one_hook(tmp_path):
  hook = jh.ProfilerHook(start_step=7, save_steps=4, output_dir=str(tmp_path))
  run(scripted_step(LOSSES), [jh.StopAtStepHook(last_step=16), hook])
  assert [(a, b) for a, b, _ in hook.traces] == [(7, 7), (8, 8), (12, 12),
                                                 (16, 16)]


@pytest.mark.parametrize("a, b, why", [
    (dict(start_step=4, num_steps=3), dict(start_step=6), "both trace step 6"),
    (dict(save_steps=4), dict(save_steps=6), "both trace step 12"),
    (dict(start_step=20, save_steps=4), dict(save_steps=6),
     "both trace step 24"),
    (dict(start_step=9, num_steps=2), dict(save_steps=5, num_steps=3),
     "both trace step 10"),
    (dict(start_step=100), dict(save_secs=60),
     r"ProfilerHook\(save_secs=60, num_steps=1, output_dir='.*'\) starts "
     "windows by the clock, at any step"),
])
def test_overlapping_profilers_are_refused_when_the_session_starts(
    tmp_path, a, b, why):
  first = jh.ProfilerHook(output_dir=str(tmp_path / "a"), **a)
  second = jh.ProfilerHook(output_dir=str(tmp_path / "b"), **b)
  step = jh.wrap(scripted_step(LOSSES), [jh.StopAtStepHook(last_step=30),
                                         first, second])
  with pytest.raises(ValueError, match=r"Two ProfilerHooks in `hooks` may "
                     r"trace at the same time \(" + why + r"\)") as e:
    step.begin(state_at())
  assert repr(first) in str(e.value) and repr(second) in str(e.value)
  assert not os.path.exists(tmp_path / "a") and not first.tracing


def test_profilers_with_disjoint_windows_share_a_loop(tmp_path):
  first = jh.ProfilerHook(start_step=2, num_steps=2,
                          output_dir=str(tmp_path / "a"))
  second = jh.ProfilerHook(save_steps=5, num_steps=1,
                           output_dir=str(tmp_path / "b"))
  run(scripted_step(LOSSES), [jh.StopAtStepHook(last_step=10), first, second])
  assert ([(a, b) for a, b, _ in first.traces],
          [(a, b) for a, b, _ in second.traces]) == ([(2, 3)],
                                                     [(5, 5), (10, 10)])


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
    (dict(output_dir="d"), "At least one of `start_step`, `save_steps` and "
     "`save_secs` must be given"),
    (dict(save_steps=5, save_secs=3, output_dir="d"),
     "At most one of `save_steps` and `save_secs` may be given, got "
     "save_steps=5, save_secs=3"),
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
  # The first call is not traced; the seconds count from it.
  assert [(a, b) for a, b, _ in hook.traces] == [(11, 13), (21, 23)]
