"""The failure contract (DESIGN.md 7): whatever ends the loop, every hook's
``end``/``on_exception`` runs, started saves reach the disk, signal
handlers and the directory lock are put back, and the first error reaches
the user with the others attached."""

import os
import signal
import subprocess
import sys
import textwrap
import threading

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import jaxhooks as jh
from _util import Recorder, dict_state, dict_step
from jaxhooks import checkpoint_io, checkpoint_lock

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
DEADLINE = 120   # seconds a subprocess may take


def run_python(code, *args, deadline=DEADLINE):
  """Runs ``code`` in a new interpreter; killed by its pid at the
  deadline."""
  proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code),
                           *map(str, args)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=ENV)
  try:
    out, err = proc.communicate(timeout=deadline)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.communicate()
    raise
  return proc.returncode, out, err


def start_python(code, *args, stdin=None):
  """Starts ``code`` in a new interpreter and waits (at most DEADLINE) for
  the first line it prints; returns ``(process, line)``. The caller kills
  the process."""
  proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)],
                          stdin=stdin, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=ENV)
  lines = []
  reader = threading.Thread(target=lambda: lines.append(
      proc.stdout.readline()), daemon=True)
  reader.start()
  reader.join(DEADLINE)
  return proc, (lines or [None])[0]


class Raises(jh.SessionRunHook):
  """Raises ``error`` from ``end`` and ``on_exception``."""

  def __init__(self, error, log):
    self.error, self.log = error, log

  def end(self, session):
    self.log.append(("raises", "end", session.step))
    raise self.error

  def on_exception(self, session, exc):
    self.log.append(("raises", "on_exception", session.step))
    raise self.error


# -- 1. a started save survives every way out of the loop --------------------

# The write of step 4 is held until the interpreter has begun to exit, so
# it is in flight whichever way the loop is left.
_LEAVE_LOOP = """
import sys, threading, time
import jax, jax.numpy as jnp
import jaxhooks as jh
from jaxhooks import checkpoint_io as cio
how, ckpt = sys.argv[1], sys.argv[2]
real = cio.step_writer
def held_writer(manager, step, *args, **kwargs):
  write = real(manager, step, *args, **kwargs)
  def held(state):
    while step == 4 and not threading._SHUTTING_DOWN:
      time.sleep(0.005)
    write(state)
  return held
cio.step_writer = held_writer
train_step = jax.jit(lambda s, b: ({"w": s["w"] + 1, "step": s["step"] + 1},
                                   {}))
saver = jh.CheckpointSaverHook(ckpt, save_steps=4)
step = jh.wrap(train_step, hooks=[saver])
state = step.begin({"w": jnp.zeros(3), "step": jnp.array(0)})
for _ in range(5):
  state, _, _ = step(state)
print("saved", saver.last_saved_step, flush=True)
if how == "raise":
  raise OSError("the data pipeline failed")
if how == "interrupt":
  raise KeyboardInterrupt
if how == "exit":
  sys.exit(3)
# "forget": the script ends without step.end(state)
"""


@pytest.mark.slow
@pytest.mark.parametrize("how, rc, said", [
    ("raise", 1, "exiting on OSError at step 5 without `end()`"),
    ("interrupt", -signal.SIGINT, "exiting on KeyboardInterrupt at step 5"),
    ("exit", 3, "The process exited at step 5 without `end()`"),
    ("forget", 0, "The process exited at step 5 without `end()`"),
])
def test_a_started_save_is_written_however_the_loop_is_left(tmp_path, how,
                                                             rc, said):
  code, out, err = run_python(_LEAVE_LOOP, how, tmp_path)
  assert (code, out) == (rc, "saved 4\n"), err
  assert said in err
  assert sorted(os.listdir(tmp_path)) == ["4"], err   # and unlocked
  restored = ocp.StandardCheckpointer().restore(tmp_path / "4" / "state")
  assert restored["w"].tolist() == [4.0, 4.0, 4.0]


# -- 2. every hook's end / on_exception runs ----------------------------------


def test_a_hook_raising_in_end_keeps_no_other_hook_from_its_end(tmp_path):
  before = signal.getsignal(signal.SIGTERM)
  log = []
  saver = jh.CheckpointSaverHook(tmp_path, save_steps=100)
  step = jh.wrap(dict_step, hooks=[
      Raises(ValueError("first"), log), Recorder("r", log), saver,
      Raises(KeyError("second"), log)])
  state = step.begin(dict_state())
  for _ in range(3):
    state, _, _ = step(state, jnp.ones(2))
  with pytest.raises(ValueError, match="first") as raised:
    step.end(state)
  assert [e for e in log if e[1] == "end"] == [
      ("raises", "end", 3), ("r", "end", 3), ("raises", "end", 3)]
  assert raised.value.__notes__ == [
      "jaxhooks: `Raises.end` failed too: KeyError: 'second'"]
  assert saver.all_steps() == [3]                 # the final save
  assert signal.getsignal(signal.SIGTERM) == before


def test_a_hook_raising_in_on_exception_keeps_the_others(tmp_path):
  before = signal.getsignal(signal.SIGTERM)
  log = []
  saver = jh.CheckpointSaverHook(tmp_path, save_steps=2,
                                 save_on_exception=True)
  def fail_at_3(ctx, values):
    if ctx.step == 3:
      raise ZeroDivisionError("a hook failed")
  step = jh.wrap(dict_step, hooks=[
      Raises(ValueError("cleanup failed"), log), jh.LambdaHook(
          after_run=fail_at_3), saver, Recorder("r", log)])
  state = step.begin(dict_state())
  with pytest.raises(ZeroDivisionError) as raised:
    for _ in range(3):
      state, _, _ = step(state, jnp.ones(2))
  assert raised.value.__notes__ == [
      "jaxhooks: `Raises.on_exception` failed too: ValueError: cleanup "
      "failed"]
  assert log[-1] == ("r", "on_exception", 2, "ZeroDivisionError")
  assert saver.all_steps() == [2]   # step 2 written; 2 is the last good one
  assert signal.getsignal(signal.SIGTERM) == before


# -- 3. one run at a time per checkpoint directory ----------------------------


_RUN_AND_HOLD = """
import sys
import jax, jax.numpy as jnp
import jaxhooks as jh
train_step = jax.jit(lambda s, b: ({"w": s["w"] + 1, "step": s["step"] + 1},
                                   {}))
saver = jh.CheckpointSaverHook(sys.argv[1], save_steps=2)
step = jh.wrap(train_step, hooks=[saver])
state = step.begin({"w": jnp.zeros(2), "step": jnp.array(0)})
for _ in range(2):
  state, _, _ = step(state)
saver.wait_until_finished()
print("saved", saver.last_saved_step, flush=True)
sys.stdin.readline()      # training goes on; killed here
"""


@pytest.mark.slow
def test_a_second_run_is_refused_and_a_killed_ones_lock_is_no_obstacle(
    tmp_path):
  proc, line = start_python(_RUN_AND_HOLD, tmp_path, stdin=subprocess.PIPE)
  try:
    assert line == "saved 2\n"
    before = sorted(os.listdir(tmp_path))
    second = jh.wrap(dict_step, hooks=[jh.CheckpointSaverHook(
        tmp_path, save_steps=1)])
    with pytest.raises(jh.CheckpointError,
                       match=rf"`checkpoint_dir` '{tmp_path}' is in use by "
                       rf"another run \(pid {proc.pid} on host"):
      second.begin(dict_state())
    assert sorted(os.listdir(tmp_path)) == before == [".jaxhooks-lock", "2"]
  finally:
    proc.kill()                       # SIGKILL: no clean-up in the holder
    proc.wait(DEADLINE)
  restart = jh.wrap(dict_step, hooks=[jh.CheckpointSaverHook(tmp_path)])
  state = restart.begin(dict_state())
  assert int(state["step"]) == 2 and state["w"].tolist() == [2.0, 2.0]
  restart.end(state)
  assert sorted(os.listdir(tmp_path)) == ["2"]


def test_a_session_of_this_process_left_open_is_ended_by_a_new_one(
    tmp_path, caplog):
  log = []
  old = jh.wrap(dict_step, hooks=[Recorder("old", log),
                                  jh.CheckpointSaverHook(tmp_path,
                                                         save_steps=2)])
  state = old.begin(dict_state())
  for _ in range(3):
    state, _, _ = old(state, jnp.ones(2))   # then the cell failed: no end
  new = jh.wrap(dict_step, hooks=[jh.CheckpointSaverHook(tmp_path)])
  assert int(new.begin(dict_state())["step"]) == 2
  assert log[-1] == ("old", "on_exception", 3, "LifecycleError")
  assert [r.getMessage() for r in caplog.records if r.levelname ==
          "WARNING"] == [
      f"A new session on `checkpoint_dir` '{tmp_path}' ended this one, left "
      "open at step 3 without `end()`. Its pending writes are finished and "
      "its hooks' `on_exception` run."]
  with pytest.raises(jh.LifecycleError):
    old(state, jnp.ones(2))
  new.end()


# -- 5. NumPy leaves changed in place while a save is written -----------------


def test_numpy_leaves_changed_in_place_are_saved_as_they_were(
    tmp_path, monkeypatch):
  release, real = threading.Event(), checkpoint_io.step_writer

  def held_writer(manager, step, *args, **kwargs):
    write = real(manager, step, *args, **kwargs)
    def held(state):
      if step == 4:
        assert release.wait(timeout=DEADLINE)
      write(state)
    return held
  monkeypatch.setattr(checkpoint_io, "step_writer", held_writer)

  def train_step(state, batch):   # NumPy, updated in place
    state["w"] += 1.0
    state["step"] += 1
    return state, {}
  saver = jh.CheckpointSaverHook(tmp_path, save_steps=4)
  step = jh.wrap(train_step, hooks=[saver])
  state = step.begin({"w": np.zeros(3, np.float32),
                      "step": np.zeros((), np.int32)})
  for _ in range(6):
    state, _, _ = step(state)
  release.set()
  step.end(state)
  saved = ocp.StandardCheckpointer().restore(tmp_path / "4" / "state")
  assert (saved["w"].tolist(), int(saved["step"])) == ([4.0] * 3, 4)


# -- 14. a failed begin puts everything back ----------------------------------


def test_a_failed_begin_puts_the_signal_handler_back_and_unlocks(tmp_path):
  before = signal.getsignal(signal.SIGTERM)
  saver = jh.CheckpointSaverHook(tmp_path, save_steps=2)
  step = jh.wrap(dict_step, hooks=[saver])
  state = step.begin(dict_state())
  for _ in range(2):
    state, _, _ = step(state, jnp.ones(2))
  step.end(state)
  log = []
  other = jh.wrap(dict_step, hooks=[Recorder("r", log),
                                    jh.CheckpointSaverHook(tmp_path)])
  with pytest.raises(jh.CheckpointMismatchError):
    other.begin({"w": jnp.ones(5), "step": jnp.array(0)})
  assert log == [("r", "begin"), ("r", "on_exception", 0,
                                  "CheckpointMismatchError")]
  assert signal.getsignal(signal.SIGTERM) == before
  with pytest.raises(jh.LifecycleError):
    other(state, jnp.ones(2))
  again = jh.wrap(dict_step, hooks=[jh.CheckpointSaverHook(tmp_path)])
  assert int(again.begin(dict_state())["step"]) == 2   # not locked
  again.end()
  assert sorted(os.listdir(tmp_path)) == ["2"]


def test_two_savers_put_the_original_handler_back_in_any_order(tmp_path):
  before = signal.getsignal(signal.SIGTERM)
  first = jh.CheckpointSaverHook(tmp_path / "a")
  second = jh.CheckpointSaverHook(tmp_path / "b")
  step = jh.wrap(dict_step, hooks=[first, second])
  step.end(step.begin(dict_state()))
  assert signal.getsignal(signal.SIGTERM) == before
  a = jh.wrap(dict_step, hooks=[jh.CheckpointSaverHook(tmp_path / "c")])
  b = jh.wrap(dict_step, hooks=[jh.CheckpointSaverHook(tmp_path / "d")])
  state_a, state_b = a.begin(dict_state()), b.begin(dict_state())
  a.end(state_a)
  b.end(state_b)
  assert signal.getsignal(signal.SIGTERM) == before


# -- 17. an error reported to the coordinator is raised at the end ------------


def test_an_error_given_to_request_stop_is_raised_after_every_end(tmp_path):
  log = []
  class DataThreadFailed(jh.SessionRunHook):
    def after_create_session(self, session, coord):
      self.coord = coord
    def after_run(self, ctx, values):
      if ctx.step == 2:
        self.coord.request_stop(OSError("the data thread failed"))
  saver = jh.CheckpointSaverHook(tmp_path)
  step = jh.wrap(dict_step, hooks=[DataThreadFailed(), Recorder("r", log),
                                   saver])
  state = step.begin(dict_state())
  stop = False
  while not stop:
    state, _, stop = step(state, jnp.ones(2))
  assert step.step == 2
  with pytest.raises(OSError, match="the data thread failed"):
    step.end(state)
  assert log[-1] == ("r", "end", 2)
  assert saver.all_steps() == [2]


def test_monitored_session_raises_a_reported_error_from_the_with_block():
  class Reports(jh.SessionRunHook):
    def after_create_session(self, session, coord):
      coord.request_stop(ValueError("bad input file"))
  with pytest.raises(ValueError, match="bad input file"):
    with jh.MonitoredTrainingSession(dict_step, dict_state(),
                                     hooks=[Reports()],
                                     log_step_count_steps=0) as sess:
      while not sess.should_stop():
        sess.run(jnp.ones(2))


# -- 18. a caught error of one run() does not end the session -----------------


def test_monitored_session_goes_on_after_a_caught_bad_batch():
  log = []
  batches = [jnp.ones(2), jnp.ones(3), jnp.ones(2)]   # the second is bad
  with jh.MonitoredTrainingSession(
      dict_step, dict_state(), log_step_count_steps=0,
      hooks=[jh.StopAtStepHook(last_step=2), Recorder("r", log)]) as sess:
    for batch in batches:
      try:
        sess.run(batch)
      except TypeError:
        pass
  assert int(sess.state["step"]) == 2
  assert [e for e in log if e[1] in ("after_run", "end")] == [
      ("r", "after_run", 1), ("r", "after_run", 2), ("r", "end", 2)]


# -- signals and interrupts while a session ends ------------------------------

# The write of step 2 is held once the interpreter has begun to exit: the
# process says so, and the test then sends a signal into that wait.
_SIGNAL_IN_EXIT_WAIT = """
import os, signal, sys, threading, time
import jax, jax.numpy as jnp
import jaxhooks as jh
from jaxhooks import checkpoint_io as cio
how, ckpt = sys.argv[1], sys.argv[2]
if how == "user_handler":
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
real = cio.step_writer
def held_writer(manager, step, *args, **kwargs):
  write = real(manager, step, *args, **kwargs)
  def held(state):
    if step == 2 and os.path.basename(str(manager.directory)) == "a":
      while not threading._SHUTTING_DOWN:
        time.sleep(0.005)
      print("held", flush=True)
      threading.Event().wait(20)   # the signal should end the process first
    write(state)
  return held
cio.step_writer = held_writer
train_step = jax.jit(lambda s, b: ({"w": s["w"] + 1, "step": s["step"] + 1},
                                   {}))
savers = [jh.CheckpointSaverHook(os.path.join(ckpt, d), save_steps=2)
          for d in ("a", "b")[:2 if how == "two_savers" else 1]]
step = jh.wrap(train_step, hooks=savers)
state = step.begin({"w": jnp.zeros(3), "step": jnp.array(0)})
for _ in range(3):
  state, _, _ = step(state)
# the script ends without step.end(state)
"""


@pytest.mark.slow
@pytest.mark.parametrize("how, sig, rc", [
    ("two_savers", signal.SIGTERM, -signal.SIGTERM),
    ("one_saver", signal.SIGINT, -signal.SIGINT),
    ("user_handler", signal.SIGTERM, 143),
])
def test_a_signal_during_the_exit_wait_acts_as_without_jaxhooks(tmp_path, how,
                                                                 sig, rc):
  proc, line = start_python(_SIGNAL_IN_EXIT_WAIT, how, tmp_path)
  try:
    assert line == "held\n"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=DEADLINE)
  finally:
    proc.kill()
  assert proc.returncode == rc, err


def test_a_sigterm_during_a_failed_begin_is_acted_on_by_the_next_session(
    tmp_path):
  class SignalledThenFails(jh.SessionRunHook):
    def after_create_session(self, session, coord):
      os.kill(os.getpid(), signal.SIGTERM)
      raise ValueError("a hook failed after the notice")
  before = signal.getsignal(signal.SIGTERM)
  failed = jh.wrap(dict_step, hooks=[jh.CheckpointSaverHook(tmp_path),
                                     SignalledThenFails()])
  with pytest.raises(ValueError):
    failed.begin(dict_state())
  assert signal.getsignal(signal.SIGTERM) == before
  saver = jh.CheckpointSaverHook(tmp_path, save_steps=100)
  retry = jh.wrap(dict_step, hooks=[jh.StopAtStepHook(last_step=10), saver])
  state = retry.begin(dict_state())
  state, _, stop = retry(state, jnp.ones(2))
  assert (stop, retry.step, saver.all_steps()) == (True, 1, [1])
  retry.end(state)
  assert signal.getsignal(signal.SIGTERM) == before


# -- stop requests with an error -------------------------------------------------


def test_a_stop_requested_by_a_thread_after_the_loops_look_is_told_by_the_call(
    tmp_path):
  step = jh.wrap(dict_step, hooks=[jh.CheckpointSaverHook(tmp_path)])
  state = step.begin(dict_state())
  state, _, _ = step(state, jnp.ones(2))
  assert not step.should_stop
  step.coord.request_stop(OSError("the data thread failed"))  # a thread
  new_state, outputs, stop = step(state, jnp.ones(2))
  assert (new_state is state, outputs, stop, step.step) == (True, None, True, 1)
  with pytest.raises(jh.LifecycleError, match="The stop came with OSError: "
                     "the data thread failed; `end\\(\\)` raises it."):
    step(state, jnp.ones(2))
  with pytest.raises(OSError, match="the data thread failed"):
    step.end(state)
  assert jh.CheckpointSaverHook(tmp_path).all_steps() == [1]


def test_an_error_given_to_request_stop_is_attached_when_the_loop_dies(
    tmp_path):
  step = jh.wrap(dict_step, hooks=[jh.CheckpointSaverHook(tmp_path)])
  state = step.begin(dict_state())
  step.coord.request_stop(OSError("the data thread failed"))
  error = KeyError("the loop's own error")
  step.abort(error)
  assert error.__notes__ == ["jaxhooks: a stop request failed too: OSError: "
                             "the data thread failed"]


def test_request_stop_takes_tensorflows_exc_info_tuple():
  coord = jh.Coordinator()
  try:
    raise OSError("disk read failed")
  except OSError:
    coord.request_stop(sys.exc_info())
  assert [type(e) for e in coord.errors] == [OSError]


# -- the lock, attacked -------------------------------------------------------


def test_a_released_lock_never_removes_another_runs_lock_file(tmp_path):
  first = checkpoint_lock.DirectoryLock(str(tmp_path))
  first.acquire()
  os.remove(tmp_path / checkpoint_lock.LOCK_FILE)   # deleted by hand
  second = checkpoint_lock.DirectoryLock(str(tmp_path))
  second.acquire()        # the documented limit: the file is the lock
  first.release()
  third = checkpoint_lock.DirectoryLock(str(tmp_path))
  with pytest.raises(jh.CheckpointError, match="in use by another run"):
    third.acquire()
  second.release()
  third.acquire()
  third.release()


def test_a_session_left_open_is_ended_through_a_symlink_too(tmp_path):
  (tmp_path / "real").mkdir()
  os.symlink(tmp_path / "real", tmp_path / "link")
  old = jh.wrap(dict_step, hooks=[jh.CheckpointSaverHook(tmp_path / "real")])
  old.begin(dict_state())
  new = jh.wrap(dict_step, hooks=[jh.CheckpointSaverHook(tmp_path / "link")])
  new.begin(dict_state())
  with pytest.raises(jh.LifecycleError):
    old(dict_state(), jnp.ones(2))
  new.end()


def test_a_notice_that_came_before_a_failed_call_is_acted_on_by_the_next(
    tmp_path):
  saver = jh.CheckpointSaverHook(tmp_path, save_steps=100)
  step = jh.wrap(dict_step, hooks=[saver])
  state = step.begin(dict_state())
  state, _, _ = step(state, jnp.ones(2))
  saver.preemption_notice.notify()      # as SIGTERM does
  with pytest.raises(TypeError):
    step(state, jnp.ones(3))            # a bad batch: this call fails
  state, _, stop = step(state, jnp.ones(2))
  assert (stop, step.step, saver.all_steps()) == (True, 2, [2])
  step.end(state)
