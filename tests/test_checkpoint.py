"""CheckpointSaverHook: exact save steps, retention, restore of the state,
hook states and data position, listeners, preemption, and each fault."""

import json
import logging
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import jaxhooks as jh
from _util import (FakeClock, dict_state, dict_step, run_loop,
                   run_with_save_held)
from jaxhooks import session as session_lib


def train(hooks, state=None, batches=None, *, train_step=dict_step):
  """begin, run to stop, end; returns (final state, hooked step)."""
  step = jh.wrap(train_step, hooks=hooks)
  state = step.begin(dict_state() if state is None else state)
  batches = iter(batches) if batches is not None else None
  stop = step.should_stop
  while not stop:
    try:
      batch = jnp.ones(2) if batches is None else next(batches)
    except StopIteration:  # the data ended: end() still runs
      break
    state, _, stop = step(state, batch)
  return step.end(state), step


def on_disk(path):
  return sorted(int(d) for d in os.listdir(path) if d.isdigit())


def saved_json(path, step, item):
  with open(os.path.join(path, str(step), item, "metadata")) as f:
    return json.load(f)


class Counter(jh.SessionRunHook):
  """A hook with its own state: counts the steps it saw."""

  def __init__(self):
    self.count = 0

  def after_run(self, run_context, run_values):
    self.count += 1

  def state_dict(self):
    return {"count": np.int64(self.count), "seen": (1, 2)}

  def load_state_dict(self, state):
    self.count = state["count"]
    self.loaded = state


class Recorder(jh.CheckpointSaverListener):

  def __init__(self, stop_after=None):
    self.calls = []
    self.stop_after = stop_after

  def begin(self):
    self.calls.append(("begin",))

  def before_save(self, session, global_step_value):
    self.calls.append(("before_save", global_step_value, session.step))

  def after_save(self, session, global_step_value):
    self.calls.append(("after_save", global_step_value))
    return global_step_value == self.stop_after

  def end(self, session, global_step_value):
    self.calls.append(("end", global_step_value))


# -- when saves happen ------------------------------------------------------


def test_saves_on_multiples_of_save_steps_and_at_end(tmp_path):
  saver = jh.CheckpointSaverHook(tmp_path, save_steps=3, max_to_keep=None)
  state, _ = train([jh.StopAtStepHook(last_step=10), saver])
  assert on_disk(tmp_path) == [3, 6, 9, 10]
  assert saver.last_saved_step == 10 and saver.manager is None
  assert saver.all_steps() == [3, 6, 9, 10]
  assert jh.CheckpointSaverHook(tmp_path / "none").all_steps() == []
  assert not (tmp_path / "none").exists()  # a query creates nothing


def test_max_to_keep_and_keep_period(tmp_path):
  train([jh.StopAtStepHook(last_step=10),
         jh.CheckpointSaverHook(tmp_path / "a", save_steps=1, max_to_keep=2)])
  assert on_disk(tmp_path / "a") == [9, 10]
  train([jh.StopAtStepHook(last_step=10),
         jh.CheckpointSaverHook(tmp_path / "b", save_steps=1, max_to_keep=2,
                                keep_period=4)])
  assert on_disk(tmp_path / "b") == [4, 8, 9, 10]


def test_best_metric_keeps_the_lowest_loss_and_the_latest(tmp_path):
  # loss(s) = (1 - s/10)^2 + (2 - s/10)^2 is lowest at s = 15; of the saved
  # steps 4, 8, ..., 28, 30: 12 (0.68) and 16 (0.52) are the best two, and
  # 30 is the latest.
  train([jh.StopAtStepHook(last_step=30),
         jh.CheckpointSaverHook(tmp_path, save_steps=4, max_to_keep=2,
                                best_metric="loss")])
  assert on_disk(tmp_path) == [12, 16, 30]


def test_best_metric_keeps_a_preemption_save_and_resumes_from_it(tmp_path):
  # SIGTERM after step 25: step 26 (loss 2.92, worse than every kept one) is
  # saved; it is the latest, so it stays and the restart resumes from it.
  saver = jh.CheckpointSaverHook(tmp_path, save_steps=4, max_to_keep=1,
                                 best_metric="loss", keep_period=20)
  step = jh.wrap(dict_step, hooks=[saver])
  state = step.begin(dict_state())
  stop = False
  while not stop:
    state, _, stop = step(state, jnp.ones(2))
    if step.step == 25:
      os.kill(os.getpid(), signal.SIGTERM)
  step.end(state)
  assert step.step == 26 and on_disk(tmp_path) == [16, 20, 26]
  resumed = jh.CheckpointSaverHook(tmp_path, save_steps=4, max_to_keep=1,
                                   best_metric="loss", keep_period=20)
  final, step = train([jh.StopAtStepHook(last_step=30), resumed])
  assert resumed.restored_step == 26 and step.step == 30
  assert on_disk(tmp_path) == [16, 20, 30]
  whole, _ = train([jh.StopAtStepHook(last_step=30)])
  assert final["w"].tobytes() == whole["w"].tobytes()


def test_save_secs_with_a_fake_clock(tmp_path):
  clock = FakeClock()
  saver = jh.CheckpointSaverHook(tmp_path, save_secs=10, clock=clock)

  def step_fn(state, batch):
    clock.t += 4.0  # each step takes 4 "seconds"
    return dict_step(state, batch)

  train([jh.StopAtStepHook(last_step=10), saver], train_step=step_fn)
  # The period starts with the session (t=0). The decision is taken as a
  # step starts: step 4 starts at t=12 and is saved (its save is timed
  # t=16, when it completes); step 8 starts at t=28; the final save at 10.
  assert on_disk(tmp_path) == [4, 8, 10]


def test_save_on_start_and_no_double_final_save(tmp_path):
  rec = Recorder()
  train([jh.StopAtStepHook(last_step=4),
         jh.CheckpointSaverHook(tmp_path, save_steps=2, save_on_start=True,
                                listeners=[rec])])
  assert on_disk(tmp_path) == [0, 2, 4]
  assert rec.calls == [("begin",), ("before_save", 0, 0), ("after_save", 0),
                       ("before_save", 2, 2), ("after_save", 2),
                       ("before_save", 4, 4), ("after_save", 4), ("end", 4)]


def _stop_requests(log):
  """A hook that records (step, local) of each step's stop request."""
  def after_run(ctx, values):
    if ctx.stop_requested:
      log.append((ctx.step, ctx.local_stop_requested))
  return jh.LambdaHook(after_run=after_run)


def test_listener_after_save_requests_stop(tmp_path):
  requests = []
  state, step = train([jh.StopAtStepHook(last_step=100),
                       jh.CheckpointSaverHook(tmp_path, save_steps=3,
                                              listeners=[Recorder(6)]),
                       _stop_requests(requests)])
  assert step.step == 6 and on_disk(tmp_path) == [3, 6]
  assert requests == [(6, True)]  # a listener may decide on one host only


def test_stop_iteration_ends_with_a_final_save(tmp_path):
  state, step = train([jh.CheckpointSaverHook(tmp_path, save_steps=4)],
                      batches=[jnp.ones(2)] * 5)
  assert step.step == 5 and on_disk(tmp_path) == [4, 5]


def _boom_step(state, batch):
  if batch is None:
    raise ValueError("bad batch")
  return dict_step(state, batch)


def _four_steps_then_fail(tmp_path, train_step, save_on_exception):
  """Saves every 3 steps, runs 4 steps, then a call whose batch is None
  fails with ValueError('bad batch') and the loop dies of it; returns
  (saver, state, exc info)."""
  saver = jh.CheckpointSaverHook(tmp_path, save_steps=3,
                                 save_on_exception=save_on_exception)
  step = jh.wrap(train_step, hooks=[saver])
  state = step.begin(dict_state())
  for _ in range(4):
    state, _, _ = step(state, jnp.ones(2))
  with pytest.raises(ValueError, match="bad batch") as info:
    step(state, None)
  step.abort(info.value)   # the loop dies of it (the exit does this too)
  return saver, state, info


@pytest.mark.parametrize("save_on_exception, steps", [(False, [3]),
                                                       (True, [3, 4])])
def test_exception_skips_the_final_save_unless_asked(tmp_path,
                                                     save_on_exception, steps):
  saver, state, _ = _four_steps_then_fail(tmp_path, _boom_step,
                                          save_on_exception)
  assert on_disk(tmp_path) == steps and saver.manager is None
  if save_on_exception:  # the last good state, step 4
    restored, _ = train([jh.StopAtStepHook(last_step=4),
                         jh.CheckpointSaverHook(tmp_path)])
    np.testing.assert_array_equal(restored["w"], state["w"])


_donating = jax.jit(dict_step.__wrapped__, donate_argnums=0)


def _donate_then_fail(state, batch):
  new_state, outputs = _donating(state, jnp.ones(2))
  if batch is None:  # fails after its input state was donated
    raise ValueError("bad batch")
  return new_state, outputs


def test_exception_after_donation_keeps_the_last_checkpoint(tmp_path, caplog):
  caplog.set_level(logging.ERROR, logger="jaxhooks")
  saver, state, info = _four_steps_then_fail(tmp_path, _donate_then_fail, True)
  assert state["w"].is_deleted()
  note = ("the train state of step 4 was donated to the failed step call, "
          "so it cannot be saved; the last checkpoint (step 3) is kept.")
  assert info.value.__notes__ == [f"jaxhooks: checkpoint not saved: {note}"]
  assert [r.getMessage() for r in caplog.records] == [
      f"While stopping on ValueError: {note}"]
  assert on_disk(tmp_path) == [3] and saver.manager is None


# -- restore ----------------------------------------------------------------


def test_restore_resumes_state_hook_states_and_stop_target(tmp_path):
  first = [jh.StopAtStepHook(num_steps=10), Counter(),
           jh.CheckpointSaverHook(tmp_path, save_steps=3)]
  step = jh.wrap(dict_step, hooks=first)
  state = step.begin(dict_state())
  for _ in range(7):
    state, _, _ = step(state, jnp.ones(2))
  step.end(state)  # leaves early: the final save is step 7
  assert saved_json(tmp_path, 7, "hooks") == {
      "StopAtStepHook:0": {"last_step": 10},
      "Counter:0": {"count": 7, "seen": [1, 2]}}

  counter = Counter()
  final, step = train([jh.StopAtStepHook(num_steps=10), counter,
                       jh.CheckpointSaverHook(tmp_path, save_steps=3)])
  assert step.step == 10 and counter.count == 10  # 7 restored + 3 run
  assert counter.loaded == {"count": 7, "seen": [1, 2]}
  uninterrupted, _ = train([jh.StopAtStepHook(last_step=10)])
  np.testing.assert_array_equal(final["w"], uninterrupted["w"])


def test_restore_keeps_dtype_and_sharding_and_ignores_partial(tmp_path):
  train([jh.StopAtStepHook(last_step=4),
         jh.CheckpointSaverHook(tmp_path, save_steps=2)])
  os.makedirs(tmp_path / "6.orbax-checkpoint-tmp-123" / "state")
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  state = jax.device_put(dict_state(), sharding)
  saver = jh.CheckpointSaverHook(tmp_path)
  step = jh.wrap(dict_step, hooks=[saver])
  restored = step.begin(state)
  assert saver.restored_step == 4 and step.step == 4
  assert restored["w"].dtype == jnp.float32
  assert restored["step"].dtype == jnp.int32
  assert restored["w"].sharding == sharding
  np.testing.assert_allclose(restored["w"], [0.6, 1.6], rtol=1e-6)
  step.end(restored)


class Seekable:

  def __init__(self):
    self.position = 0

  def __iter__(self):
    return self

  def __next__(self):
    self.position += 1
    return jnp.full(2, float(self.position))

  def get_state(self):
    return {"position": self.position, "tag": b"\x00\xff"}

  def set_state(self, state):
    assert state["tag"] == b"\x00\xff"
    self.position = state["position"]


@pytest.mark.parametrize("as_pair", [False, True])
def test_data_position_is_saved_and_restored(tmp_path, as_pair):
  def hook(it):
    if as_pair:
      return jh.CheckpointSaverHook(tmp_path, save_steps=2,
                                    data_state=(it.get_state, it.set_state))
    return jh.CheckpointSaverHook(tmp_path, save_steps=2, data_iterator=it)

  it = Seekable()
  train([jh.StopAtStepHook(last_step=3), hook(it)], batches=it)
  it2 = Seekable()
  final, _ = train([jh.StopAtStepHook(last_step=6), hook(it2)], batches=it2)
  assert it2.position == 6
  it3 = Seekable()
  whole, _ = train([jh.StopAtStepHook(last_step=6)], batches=it3)
  np.testing.assert_array_equal(final["w"], whole["w"])


def test_data_position_of_another_process_is_not_restored(tmp_path, caplog):
  caplog.set_level(logging.WARNING, logger="jaxhooks")
  it = Seekable()
  train([jh.StopAtStepHook(last_step=2),
         jh.CheckpointSaverHook(tmp_path, data_iterator=it)], batches=it)
  assert saved_json(tmp_path, 2, "data") == {
      "position": 2, "tag": {"__bytes_b64__": "AP8="}}
  data = tmp_path / "2" / "data"
  os.rename(data / "metadata", data / "metadata.process_1")
  it2 = Seekable()
  saver = jh.CheckpointSaverHook(tmp_path, data_iterator=it2)
  step = jh.wrap(dict_step, hooks=[saver])
  step.end(step.begin(dict_state()))
  assert saver.restored_step == 2 and it2.position == 0
  assert [r.getMessage() for r in caplog.records] == [
      "The checkpoint of step 2 holds no data position of process 0 (no "
      f"{data / 'metadata'}); the data iterator is not restored."]


# -- preemption -------------------------------------------------------------


def test_sigterm_saves_next_step_waits_and_stops(tmp_path):
  before = signal.getsignal(signal.SIGTERM)
  saver = jh.CheckpointSaverHook(tmp_path, save_steps=100)
  step = jh.wrap(dict_step, hooks=[saver])
  state = step.begin(dict_state())
  assert saver.preemption_notice.installed
  assert signal.getsignal(signal.SIGTERM) not in (before, signal.SIG_DFL)
  stop, calls = False, 0
  while not stop:
    state, _, stop = step(state, jnp.ones(2))
    calls += 1
    if calls == 3:
      os.kill(os.getpid(), signal.SIGTERM)
  assert step.step == 4 and on_disk(tmp_path) == [4]
  assert not any("tmp" in d for d in os.listdir(tmp_path))  # written
  step.end(state)
  assert on_disk(tmp_path) == [4]  # no second save of step 4
  assert signal.getsignal(signal.SIGTERM) == before


def test_preemption_step_goes_through_the_coordinator(tmp_path):
  class Agreed(jh.Coordinator):
    check_every_n_steps = 5   # agreed steps are check steps

    def agree_preemption_step(self, step, *, notified):
      return 5  # as if another process saw the notice

  step = jh.wrap(dict_step, hooks=[jh.CheckpointSaverHook(
      tmp_path, save_on_preemption=True)], coord=Agreed())
  state = step.begin(dict_state())
  stop = False
  for _ in range(10):
    state, _, stop = step(state, jnp.ones(2))
    if stop:
      break
  step.end(state)
  assert step.step == 5 and on_disk(tmp_path) == [5]


# -- faults -----------------------------------------------------------------


def test_unwritable_checkpoint_dir_fails_at_begin(tmp_path):
  (tmp_path / "file").write_text("x")
  bad = tmp_path / "file" / "ckpt"
  calls = []
  step = jh.wrap(lambda s, b: calls.append(1),
                 hooks=[jh.CheckpointSaverHook(bad, save_steps=1)])
  with pytest.raises(jh.CheckpointError,
                     match=f"`checkpoint_dir` '{bad}' is not a writable "
                           "directory: NotADirectoryError"):
    step.begin(dict_state())
  assert calls == []


def test_corrupted_checkpoint_gives_a_clear_error(tmp_path):
  train([jh.StopAtStepHook(last_step=4),
         jh.CheckpointSaverHook(tmp_path, save_steps=2)])
  for root, _, files in os.walk(tmp_path / "4" / "state"):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  step = jh.wrap(dict_step, hooks=[jh.CheckpointSaverHook(tmp_path)])
  with pytest.raises(jh.CheckpointError) as info:
    step.begin(dict_state())
  msg = str(info.value)
  assert msg.startswith(f"The checkpoint of step 4 in '{tmp_path / '4'}' "
                        "is corrupted")
  assert msg.endswith("Delete that directory to resume from the previous "
                      "checkpoint (steps on disk: [2, 4]).")


def test_structure_mismatch_names_the_differences(tmp_path):
  train([jh.StopAtStepHook(last_step=2), jh.CheckpointSaverHook(tmp_path)])
  other = {"w": jnp.zeros(3), "b": jnp.zeros(1), "step": jnp.array(0)}
  step = jh.wrap(dict_step, hooks=[jh.CheckpointSaverHook(tmp_path)])
  with pytest.raises(jh.CheckpointMismatchError) as info:
    step.begin(other)
  assert str(info.value) == (
      f"The checkpoint of step 2 in '{tmp_path / '2'}' does not match the "
      "structure of `state`: missing in the checkpoint: b; w: shape (3,) in "
      "the state, (2,) in the checkpoint.")


def _nan_at_3(state, batch):
  return dict_step(state, jnp.where(state["step"] == 2, jnp.nan, batch))


def test_non_finite_state_is_never_written(tmp_path):
  saver = jh.CheckpointSaverHook(tmp_path, save_steps=3)
  step = jh.wrap(jax.jit(_nan_at_3), hooks=[saver])
  state = step.begin(dict_state())
  for _ in range(2):
    state, _, _ = step(state, jnp.ones(2))
  with pytest.raises(jh.NonFiniteStateError,
                     match="Refusing to save a non-finite train state .* at "
                           "step 3") as info:
    step(state, jnp.ones(2))
  assert info.value.__notes__ == [
      "The first non-finite leaf of the state is ['w']."]
  assert on_disk(tmp_path) == [] and os.listdir(tmp_path) == []


def test_non_finite_state_can_stop_instead(tmp_path, caplog):
  caplog.set_level(logging.ERROR, logger="jaxhooks")
  requests = []
  final, step = train([jh.StopAtStepHook(last_step=9),
                       jh.CheckpointSaverHook(tmp_path, save_steps=1,
                                              on_nonfinite="stop"),
                       _stop_requests(requests)],
                      train_step=jax.jit(_nan_at_3))
  assert step.step == 3 and on_disk(tmp_path) == [1, 2]
  assert requests == [(3, False)]  # the same on every process
  assert [r.getMessage() for r in caplog.records] == [
      "Not saving the non-finite train state of step 3; the last checkpoint "
      "(step 2) is kept."] * 2  # in after_run, and the final save in end


@pytest.mark.parametrize("async_save", [False, True])
def test_write_failure_surfaces(tmp_path, async_save):
  """A sync save fails in the step call that saves; an async one at the
  next save or, here, in ``end``."""
  saver = jh.CheckpointSaverHook(tmp_path / "c", save_steps=2,
                                 async_save=async_save)
  step = jh.wrap(dict_step, hooks=[saver])
  state = step.begin(dict_state())
  shutil.rmtree(tmp_path / "c")
  (tmp_path / "c").write_text("not a directory any more")
  state, _, _ = step(state, jnp.ones(2))
  failure = pytest.raises(
      jh.CheckpointError,
      match=f"Saving step 2 to `checkpoint_dir` '{tmp_path}/c' "
            "failed: (NotADirectory|FileNotFound)Error")
  if async_save:
    state, _, stop = step(state, jnp.ones(2))
    assert (step.step, stop, saver.last_saved_step) == (2, False, 2)
    with failure:
      step.end(state)
  else:
    with failure:
      step(state, jnp.ones(2))
  assert saver.manager is None  # closed by end / on_exception


def _fail_commit_once(monkeypatch, step):
  """The first commit (rename of the temporary directory) of ``step``
  fails as a full disk would; Orbax and the writer thread run for real."""
  real, failed = os.rename, []

  def rename(src, dst, *args, **kwargs):
    if (not failed and os.path.basename(os.fspath(src)).startswith(
        f"{step}.orbax-checkpoint-tmp")):
      failed.append(src)
      raise OSError(28, "No space left on device")
    return real(src, dst, *args, **kwargs)
  monkeypatch.setattr(os, "rename", rename)
  return failed


def test_the_loop_goes_on_while_a_save_is_written(tmp_path, monkeypatch):
  """The write of step 2 is held before it makes its directory: step 3
  still runs and overwrites the donated state of step 2 (the write has its
  own copy), and ``end`` waits for the write before the final save."""
  saver = jh.CheckpointSaverHook(tmp_path / "c", save_steps=2)
  step = jh.wrap(jax.jit(dict_step, donate_argnums=0), hooks=[saver])
  _, w2 = run_with_save_held(monkeypatch, step, dict_state(), jnp.ones(2),
                             lambda s: np.asarray(s["w"]).tobytes(), saver)
  assert saver.all_steps() == [2, 3]
  saved = ocp.StandardCheckpointer().restore(tmp_path / "c" / "2" / "state")
  assert np.asarray(saved["w"]).tobytes() == w2


def test_a_failed_background_write_is_raised_in_end_after_the_final_save(
    tmp_path, monkeypatch, caplog):
  failed = _fail_commit_once(monkeypatch, 2)
  saver = jh.CheckpointSaverHook(tmp_path / "c", save_steps=2)
  step = jh.wrap(dict_step, hooks=[saver])
  state = step.begin(dict_state())
  for _ in range(3):
    state, _, _ = step(state, jnp.ones(2))
  with pytest.raises(jh.CheckpointError,
                     match="Saving step 2 .* No space left on device"):
    step.end(state)
  assert len(failed) == 1
  assert saver.all_steps() == [3]            # the final state is on disk
  assert saver.last_saved_step == 3
  assert [r.levelname for r in caplog.records
          if "Saving step 2" in r.getMessage()] == ["ERROR"]


class _Raises(jh.SessionRunHook):

  def before_run(self, run_context):
    if run_context.step == 3:
      raise RuntimeError("data pipeline broke")


class _Seen(jh.SessionRunHook):

  def __init__(self):
    self.exceptions = []

  def on_exception(self, session, exc):
    self.exceptions.append(str(exc))


def test_a_failed_background_write_does_not_replace_the_loops_error(
    tmp_path, monkeypatch):
  _fail_commit_once(monkeypatch, 2)
  saver = jh.CheckpointSaverHook(tmp_path / "c", save_steps=2,
                                 save_on_exception=True)
  seen = _Seen()
  step = jh.wrap(dict_step, hooks=[_Raises(), saver, seen])
  state = step.begin(dict_state())
  for _ in range(2):
    state, _, _ = step(state, jnp.ones(2))
  with pytest.raises(RuntimeError, match="data pipeline broke") as info:
    step(state, jnp.ones(2))
  assert any("checkpoint not saved: Saving step 2" in note
             for note in info.value.__notes__)
  assert seen.exceptions == ["data pipeline broke"]  # hooks after it run
  # Step 2 was not written: save_on_exception saves that last good state.
  assert saver.all_steps() == [2]
  assert saver.manager is None


def test_a_step_called_as_it_is_donates_as_it_does(tmp_path):
  """``donate_state=False`` cannot stop a donating jitted step that
  jaxhooks calls as it is; the async saves copy its state all the same."""
  donating = jax.jit(dict_step, donate_argnums=0)
  saver = jh.CheckpointSaverHook(tmp_path / "c", save_steps=2)
  step = jh.wrap(donating, hooks=[jh.StopAtStepHook(last_step=6), saver],
                 donate_state=False)
  state = step.begin(dict_state())
  assert step.session().donates_state
  expected = []
  while not step.should_stop:
    state, _, _ = step(state, jnp.ones(2))
    expected.append(np.asarray(state["w"]).tobytes())
  step.end(state)
  assert saver.all_steps() == [2, 4, 6]
  restored = jh.CheckpointSaverHook(tmp_path / "c")
  resumed = jh.wrap(dict_step, hooks=[restored])
  again = resumed.begin(dict_state())
  assert np.asarray(again["w"]).tobytes() == expected[-1]
  resumed.end(again)                      # step 6 is on disk: no new save
  assert restored.all_steps() == [2, 4, 6]


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(save_steps=2, save_secs=5), ValueError, "At most one of"),
    (dict(save_steps=0), ValueError, "`save_steps` must be positive, got 0"),
    (dict(max_to_keep=0), ValueError, "`max_to_keep` must be an int >= 1"),
    (dict(on_nonfinite="skip"), ValueError, "`on_nonfinite` must be"),
    (dict(best_mode="low"), ValueError, "`best_mode` must be 'min' or"),
    (dict(listeners=[object()]), TypeError, r"`listeners\[0\]` must be"),
    (dict(data_iterator=iter([])), TypeError, "`data_iterator` must have"),
    (dict(data_state=(len,)), TypeError, "`data_state` must be a pair"),
])
def test_bad_arguments(tmp_path, kwargs, error, match):
  with pytest.raises(error, match=match):
    jh.CheckpointSaverHook(tmp_path, **kwargs)


# -- MonitoredTrainingSession defaults --------------------------------------


def test_default_hooks_follow_tensorflow():
  def saver(**kw):
    args = dict(checkpoint_dir="/tmp/x", save_checkpoint_steps=None,
                save_checkpoint_secs=None, save_summaries_steps=None,
                save_summaries_secs=None, log_step_count_steps=0)
    hooks = session_lib.default_hooks(**{**args, **kw})
    assert [type(h) for h in hooks] == [jh.CheckpointSaverHook]
    return repr(hooks[0])
  assert saver() == ("CheckpointSaverHook('/tmp/x', SecondOrStepTimer("
                     "every_secs=600.0, last_step=None))")
  assert saver(save_checkpoint_steps=50).endswith("every_steps=50, "
                                                  "last_step=None))")
  assert saver(save_checkpoint_secs=0).endswith("no periodic saves)")
  with pytest.raises(ValueError, match="At most one of"):
    saver(save_checkpoint_steps=5, save_checkpoint_secs=5)


def test_monitored_session_restores_and_saves(tmp_path):
  for last in (3, 5):
    with jh.MonitoredTrainingSession(
        dict_step, dict_state(), checkpoint_dir=str(tmp_path),
        save_checkpoint_steps=2, log_step_count_steps=0,
        hooks=[jh.StopAtStepHook(last_step=last)]) as sess:
      start = sess.global_step
      while not sess.should_stop():
        sess.run(jnp.ones(2))
    assert start == (0 if last == 3 else 3)
  assert on_disk(tmp_path) == [2, 3, 4, 5]
  np.testing.assert_allclose(sess.state["w"], [0.5, 1.5], rtol=1e-6)


def test_a_relative_checkpoint_dir_is_made_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  hook = jh.CheckpointSaverHook("runs/rel", save_steps=2)
  assert hook.checkpoint_dir == str(tmp_path / "runs" / "rel")
  step = jh.wrap(dict_step, hooks=[jh.StopAtStepHook(last_step=4), hook])
  run_loop(step, dict_state())
  assert sorted(p.name for p in (tmp_path / "runs" / "rel").iterdir()) == [
      "2", "4"]
