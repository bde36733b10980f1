"""Fused execution (``steps_per_call``), hooks skipped between their steps
of interest, and lagged fetch delivery."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxhooks as jh
from _util import count_compiles

DATA = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)


@jax.jit
def train_step(state, x):
  w = state["w"] - 0.05 * (state["w"] * jnp.sum(x) - x)
  return {"w": w, "step": state["step"] + 1}, {"loss": jnp.sum(w ** 2)}


def init(step=0):
  return {"w": jnp.ones(3, jnp.float32), "step": jnp.array(step, jnp.int32)}


class Every(jh.SessionRunHook):
  """Acts (records the step) on multiples of ``n``; says so to the runner."""

  def __init__(self, n):
    self.n = n
    self.acted, self.calls = [], []

  def next_step_of_interest(self, step):
    return (step // self.n + 1) * self.n

  def after_run(self, run_context, run_values):
    self.calls.append((run_context.start_step, run_context.step))
    if run_context.step % self.n == 0:
      self.acted.append(run_context.step)


class EveryCall(jh.SessionRunHook):
  """Records every call's (start, end); no step of its own, always due."""

  def __init__(self):
    self.calls = []

  def next_step_of_interest(self, step):
    return None

  def after_run(self, run_context, run_values):
    self.calls.append((run_context.start_step, run_context.step))


def run(k, tmp_path, *, start=0, last=43, use_batch_fn=False, caplog=None):
  every7 = Every(7)
  every7.all_calls = EveryCall()
  saver = jh.CheckpointSaverHook(tmp_path / f"ckpt{k}{use_batch_fn}",
                                 save_steps=10)
  hooks = [jh.StopAtStepHook(last_step=last), every7, every7.all_calls,
           jh.LoggingTensorHook(["loss"], every_n_iter=5,
                                formatter=lambda v: f"loss {v['loss']:.6f}"),
           jh.NanTensorHook("loss"), saver]
  batch_fn = (lambda data, s: data[s]) if use_batch_fn else None
  step = jh.wrap(train_step, hooks=hooks, steps_per_call=k, batch_fn=batch_fn)
  state = step.begin(init(start))
  sizes = []
  while not step.should_stop:
    n = step.steps_next_call
    sizes.append(n)
    s = step.step
    batch = DATA if use_batch_fn else (DATA[s] if k == 1 else DATA[s:s + n])
    state, _, _ = step(state, batch)
  state = step.end(state)
  return state, every7, sizes, saver.all_steps()


@pytest.mark.parametrize("k", [3, 10])
@pytest.mark.parametrize("use_batch_fn", [False, True])
def test_fused_hits_every_trigger_step_and_matches_the_unfused_loop(
    k, use_batch_fn, tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="jaxhooks")
  ref, ref_hook, ref_sizes, ref_saves = run(1, tmp_path)
  ref_lines = [r.getMessage() for r in caplog.records]
  caplog.clear()
  state, hook, sizes, saves = run(k, tmp_path, use_batch_fn=use_batch_fn)
  lines = [r.getMessage() for r in caplog.records]
  # Same parameters, bit for bit; same stop step.
  assert state["w"].tobytes() == ref["w"].tobytes()
  assert int(state["step"]) == int(ref["step"]) == 43
  # The same actions at the same steps.
  assert hook.acted == ref_hook.acted == [7, 14, 21, 28, 35, 42]
  assert saves == ref_saves == [10, 20, 30, 40, 43]
  assert [x for x in lines if x.startswith("loss")] == [
      x for x in ref_lines if x.startswith("loss")]
  assert len([x for x in lines if x.startswith("loss")]) == 8  # 5 ... 40
  # No call steps over a multiple of 7, 5 or 10 without ending there.
  calls = hook.all_calls.calls
  assert len(calls) == len(sizes) and calls[-1][1] == 43
  for start, end in calls:
    assert not any(s % 7 == 0 or s % 5 == 0 for s in range(start + 1, end))
  assert ref_sizes == [1] * 43 and sum(sizes) == 43 and max(sizes) <= k
  if k == 3:
    assert sizes[:4] == [3, 2, 2, 3]     # cut at 5, 7, 10


def test_fused_with_k1_is_the_plain_loop(tmp_path):
  state, hook, sizes, saves = run(1, tmp_path)
  assert sizes == [1] * 43 and hook.acted == [7, 14, 21, 28, 35, 42]


def test_fused_restart_from_an_unaligned_step_stops_exactly(tmp_path):
  state, _, sizes, _ = run(10, tmp_path, start=13, last=31)
  assert int(state["step"]) == 31
  assert sizes == [1, 1, 5, 1, 4, 3, 2, 1]   # to 14 15 20 21 25 28 30 31


def test_shorter_calls_compile_nothing_new():
  step = jh.wrap(train_step, hooks=[jh.StopAtStepHook(last_step=40),
                                    jh.LoggingTensorHook(["loss"],
                                                         every_n_iter=7)],
                 steps_per_call=5)
  state = step.begin(init())
  state, _, _ = step(state, DATA[:step.steps_next_call])   # compiles once
  with count_compiles() as compiles:
    while not step.should_stop:
      s, n = step.step, step.steps_next_call
      state, _, _ = step(state, DATA[s:s + n])
    step.end(state)
  assert compiles[0] == 0
  assert step.step == 40


def test_nan_sentinel_names_the_first_bad_step_inside_a_fused_call():
  @jax.jit
  def bad_from_17(state, x):
    new, out = train_step(state, x)
    return new, {"loss": jnp.where(new["step"] >= 17, jnp.inf, out["loss"])}

  step = jh.wrap(bad_from_17, hooks=[jh.NanTensorHook("loss", every_n_iter=20)],
                 steps_per_call=10)
  state = step.begin(init())
  with pytest.raises(jh.NanLossDuringTrainingError) as info:
    for _ in range(5):
      state, _, _ = step(state, DATA[step.step:step.step + 10])
  assert info.value.step == 17
  assert str(info.value) == ("NaN loss during training: `loss` was inf at "
                             "step 17.")
  assert step.step == 10   # noticed at step 20: the last good state is 10


def test_fused_argument_errors():
  with pytest.raises(ValueError, match=r"`steps_per_call` must be an int >= 1, "
                                       r"got 0"):
    jh.wrap(train_step, steps_per_call=0)
  with pytest.raises(TypeError, match=r"`batch_fn` must be callable, got 3"):
    jh.wrap(train_step, steps_per_call=2, batch_fn=3)
  step = jh.wrap(train_step, hooks=[jh.StopAtStepHook(last_step=8)],
                 steps_per_call=4)
  state = step.begin(init())
  with pytest.raises(TypeError, match=r"exactly 4 rows .* got `batch` with "
                                      r"leading sizes \[3\]"):
    step(state, DATA[:3])


def test_calls_before_the_next_step_of_interest_run_no_hook():
  every = Every(5)
  log, feeds = [], []

  def feed():   # a FeedFnHook has no step of its own: it runs on every call
    feeds.append(len(feeds))
    return DATA[len(feeds) - 1]
  step = jh.wrap(train_step, hooks=[
      every, jh.StopAtStepHook(last_step=12), jh.FeedFnHook(feed),
      jh.LambdaHook(end=lambda session: log.append(session.step))])
  state = step.begin(init())
  while not step.should_stop:
    state, _, _ = step(state)
  step.end(state)
  # The first call runs every hook; then only 5, 10 and the stop step 12.
  assert every.calls == [(0, 1), (4, 5), (9, 10), (11, 12)]
  assert feeds == list(range(12)) and log == [12]


class LaggedRecorder(jh.SessionRunHook):
  accepts_lagged_fetches = True

  def __init__(self, log):
    self.log = log

  def next_step_of_interest(self, step):
    return (step // 3 + 1) * 3

  def before_run(self, run_context):
    self.log.append(("before", run_context.step))
    if run_context.step % 3 == 0:
      return jh.RunArgs(fetches={"loss": "loss", "step": jh.GLOBAL_STEP})
    return None

  def after_run(self, run_context, run_values):
    res = run_values.results
    self.log.append(("after", run_values.step,
                     None if res is None else int(res["step"])))


@pytest.mark.parametrize("lag", [False, True])
def test_lagged_fetches_arrive_during_the_next_call(lag):
  log = []
  step = jh.wrap(train_step, hooks=[LaggedRecorder(log),
                                    jh.StopAtStepHook(last_step=6)],
                 lag_fetches=lag)
  state = step.begin(init())
  while not step.should_stop:
    state, _, _ = step(state, DATA[step.step])
  step.end(state)
  if not lag:
    assert log == [("before", 1), ("after", 1, None), ("before", 3),
                   ("after", 3, 3), ("before", 6), ("after", 6, 6)]
  else:
    # Step 3's values reach after_run in the call of step 4, after its
    # before_run; step 6 is the last, so its values come before it returns.
    assert log == [("before", 1), ("after", 1, None), ("before", 3),
                   ("before", 4), ("after", 3, 3), ("after", 4, None),
                   ("before", 6), ("after", 6, 6)]


def _logged_after_each_call(fn, caplog):
  """Log lines seen after each call of a lagged loop logging every 4 steps."""
  caplog.set_level(logging.INFO, logger="jaxhooks")
  seen = {}
  step = jh.wrap(fn, hooks=[
      jh.StopAtStepHook(last_step=9),
      jh.LoggingTensorHook({"s": jh.GLOBAL_STEP}, every_n_iter=4,
                           formatter=lambda v: f"step {v['s']}")],
      lag_fetches=True)
  state = step.begin(init())
  while not step.should_stop:
    state, _, _ = step(state, DATA[step.step])
    seen[step.step] = [r.getMessage() for r in caplog.records]
  step.end(state)
  return seen


def test_lagged_logging_does_not_wait_on_its_trigger_step(caplog):
  seen = _logged_after_each_call(train_step, caplog)
  assert seen[4] == [] and seen[5] == ["step 4"]
  assert seen[8] == ["step 4"] and seen[9] == ["step 4", "step 8"]


def test_lagged_fetches_fall_back_to_at_once_when_the_state_is_donated(caplog):
  donating = jax.jit(train_step.__wrapped__, donate_argnums=0)
  seen = _logged_after_each_call(donating, caplog)
  assert seen[4] == ["step 4"] and seen[8] == ["step 4", "step 8"]


class Process(jh.Coordinator):
  """One process of a 2-process job as the runner sees it; checks are no-ops
  (the agreement itself is tested on real processes)."""
  check_every_n_steps = 5

  def __init__(self, index):
    super().__init__(process_index=index, process_count=2)


@pytest.mark.parametrize("index", [0, 1])
def test_every_process_cuts_the_same_calls_and_sees_a_nan_at_the_same_step(
    index):
  @jax.jit
  def nan_from_3(state, x):
    new, out = train_step(state, x)
    return new, {"loss": jnp.where(new["step"] >= 3, jnp.nan, out["loss"])}

  calls = EveryCall()
  logger = jh.LoggingTensorHook(["loss"], every_n_iter=2)   # process 0 only
  step = jh.wrap(nan_from_3, hooks=[logger, jh.NanTensorHook("loss"), calls],
                 coord=Process(index), steps_per_call=3)
  assert (logger in step.hooks) == (index == 0)
  state = step.begin(init())
  with pytest.raises(jh.NanLossDuringTrainingError) as info:
    for _ in range(10):
      state, _, _ = step(state, DATA[step.step:step.step + step.steps_next_call])
  # The logger reads at step 2 and 4 on process 0 only; the sentinel is read
  # where every process reads: the check step 5.
  assert info.value.step == 3
  assert calls.calls == [(0, 2), (2, 4)]   # the same on both processes
  assert step.step == 4   # failed in the call that ends at check step 5


def test_stop_iteration_after_the_step_rolls_the_nan_sentinel_back():
  @jax.jit
  def nan_at_3(state, x):
    new, out = train_step(state, x)
    return new, {"loss": jnp.where(new["step"] == 3, jnp.nan, out["loss"])}

  def data_ends(ctx, values):
    if ctx.step == 3:
      raise StopIteration
  step = jh.wrap(nan_at_3, hooks=[jh.NanTensorHook("loss"),
                                  jh.LambdaHook(after_run=data_ends)])
  state = step.begin(init())
  stop = False
  while not stop:
    state, _, stop = step(state, DATA[step.step])
  # Step 3 (the NaN one) was rolled back: the run ends at step 2, cleanly.
  assert int(step.end(state)["step"]) == 2


def test_monitored_training_session_runs_fused_calls(tmp_path):
  with jh.MonitoredTrainingSession(
      train_step, init(), checkpoint_dir=str(tmp_path),
      save_checkpoint_steps=5, log_step_count_steps=0,
      save_summaries_steps=0, steps_per_call=4,
      batch_fn=lambda data, s: data[s],
      hooks=[jh.StopAtStepHook(last_step=12)]) as sess:
    sizes = []
    while not sess.should_stop():
      sizes.append(sess.steps_next_call)
      sess.run(DATA)
  ref, _, _, _ = run(1, tmp_path / "ref", last=12)
  assert sizes == [4, 1, 4, 1, 2]   # cut at the saves of steps 5 and 10
  assert sess.state["w"].tobytes() == ref["w"].tobytes()
  assert jh.CheckpointSaverHook(tmp_path).all_steps() == [5, 10, 12]
