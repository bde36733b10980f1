"""Kill-and-resume: a real training process (tests/resume_job.py) is killed
with SIGKILL at seeded random points, including in the middle of a save and
of the final save in ``end()``, or preempted with SIGTERM; restarted, it must
end with the params, optimizer state, step and data position of an
uninterrupted run, bit for bit.

The kill points come from the seeds in ``JAXHOOKS_KILL_SEEDS`` (comma
separated; the default ``0,1,4`` kills in the middle of the saves of steps 4
and 12 and after steps 14 and 19); every assertion message names the seed
and the kill points, so a failure can be replayed with that seed.
"""

import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # every test kills and resumes a process

HERE = os.path.dirname(os.path.abspath(__file__))
JOB = os.path.join(HERE, "resume_job.py")
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
LAST_STEP, SAVE_STEPS = 22, 4  # as in resume_job.py
SAVES = [4, 8, 12, 16, 20, 22]
SEEDS = [int(s) for s in os.environ.get("JAXHOOKS_KILL_SEEDS",
                                        "0,1,4").split(",")]
TIMEOUT = 120  # seconds one run of the job may take


class Job:
  """One run of resume_job.py; every wait is bounded by TIMEOUT and the
  process is killed when the time is up."""

  def __init__(self, ckpt_dir, out, *extra):
    self._stderr = tempfile.TemporaryFile("w+")
    self.proc = subprocess.Popen(
        [sys.executable, JOB, str(ckpt_dir), str(out), *map(str, extra)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
        text=True, env=ENV)
    self.lines = []
    self._deadline = time.monotonic() + TIMEOUT
    self._queue = queue.Queue()
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self):
    for line in self.proc.stdout:
      self._queue.put(line.rstrip("\n"))
    self._queue.put(None)

  def _left(self):
    return max(0.1, self._deadline - time.monotonic())

  def _timed_out(self):
    self.kill()
    pytest.fail(f"resume_job.py {self.proc.args[2:]} did not finish within "
                f"{TIMEOUT} s; killed. stdout: {self.lines[-5:]}, stderr: "
                f"{self.stderr[-2000:]}")

  def next_line(self):
    """The next line of stdout, or None once the process closed it."""
    try:
      line = self._queue.get(timeout=self._left())
    except queue.Empty:
      self._timed_out()
    if line is not None:
      self.lines.append(line)
    return line

  def send(self, text):
    self.proc.stdin.write(text)
    self.proc.stdin.flush()

  def wait(self):
    """Reads stdout to its end and waits for the exit; the return code."""
    while self.next_line() is not None:
      pass
    try:
      return self.proc.wait(timeout=self._left())
    except subprocess.TimeoutExpired:
      self._timed_out()

  def kill(self):
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait(timeout=30)

  @property
  def stderr(self):
    self._stderr.seek(0)
    return self._stderr.read()

  def close(self):
    self.kill()
    for f in (self.proc.stdin, self.proc.stdout, self._stderr):
      f.close()


@pytest.fixture
def start_job():
  """Starts resume_job.py runs; kills whatever is left at teardown."""
  jobs = []

  def start(*args):
    jobs.append(Job(*args))
    return jobs[-1]
  yield start
  for job in jobs:
    job.close()


def _run(start_job, ckpt_dir, out, *extra):
  job = start_job(ckpt_dir, out, *extra)
  return job.wait(), job.lines, job.stderr


def _tmp_dirs(ckpt_dir):
  return sorted(d for d in os.listdir(ckpt_dir) if "tmp" in d)


def _steps_on_disk(ckpt_dir):
  return sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())


def _assert_identical(out, reference, where=""):
  got, want = np.load(out), np.load(reference)
  assert sorted(got.files) == sorted(want.files), where
  for key in want.files:
    a, b = got[key], want[key]
    assert (a.dtype, a.shape) == (b.dtype, b.shape), f"{where} {key}"
    assert a.tobytes() == b.tobytes(), f"{where} {key}: {a} != {b}"
  assert int(got["step"]) == LAST_STEP, where
  assert int(got["position"]) == LAST_STEP, where


def _kill_plan(seed):
  """One or two kills at increasing points, so that each one happens after
  the restart before it: ("after_step", s) for a step s, ("mid_save", s)
  for a saved step s (22 is the final save in end())."""
  rng = random.Random(seed)
  points = sorted(rng.sample(range(1, LAST_STEP + 1), rng.choice([1, 2])))
  plan = []
  for s in points:
    if rng.random() < 0.5:
      # The save at or after s that the run reaches (a multiple of 4, or 22).
      s = min(p for p in SAVES if p >= s)
      if plan and plan[-1][1] >= s:
        continue
      plan.append(("mid_save", s))
    else:
      plan.append(("after_step", s))
  return plan


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted run: (out.npz, its stdout lines)."""
  root = tmp_path_factory.mktemp("reference")
  job = Job(root / "ckpt", root / "out.npz")
  try:
    assert job.wait() == 0, job.stderr
  finally:
    job.close()
  lines = job.lines
  assert lines[0] == "start 0"
  assert [l for l in lines if l.startswith("saved")] == [
      f"saved {s}" for s in SAVES]
  assert _steps_on_disk(root / "ckpt") == SAVES[-5:]  # max_to_keep=5
  return root / "out.npz", lines


def _kill_and_resume(start_job, tmp_path, reference, plan, where):
  ckpt = tmp_path / "ckpt"
  start = 0
  for how, at in plan:
    code, lines, stderr = _run(start_job, ckpt, tmp_path / "out.npz",
                               "--die-at", at, "--die-how", how)
    assert code == -signal.SIGKILL, f"{where}: rc {code}; {stderr[-2000:]}"
    assert lines[0] == f"start {start}", where
    if how == "mid_save":   # the loop may go on while the save is written
      assert f"saved {at}" in lines, where
    else:
      assert lines[-1] == f"step {at}", where
    done = [s for s in _steps_on_disk(ckpt) if s <= at]
    if how == "mid_save":
      # Killed while step `at` was being written: only its temporary
      # directory is there, and restore must ignore it.
      assert f"{at}.orbax-checkpoint-tmp" in " ".join(_tmp_dirs(ckpt)), where
      assert at not in done, where
    start = max(done, default=0)
  code, lines, stderr = _run(start_job, ckpt, tmp_path / "out.npz")
  assert code == 0, f"{where}: {stderr[-2000:]}"
  steps = [int(l.split()[1]) for l in lines if l.startswith("step ")]
  assert lines[0] == f"start {start}", where
  assert steps == list(range(start + 1, LAST_STEP + 1)), where
  assert _tmp_dirs(ckpt) == [], where
  _assert_identical(tmp_path / "out.npz", reference[0], where)


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_sigkill_at_seeded_points_then_resume_is_bit_identical(
    tmp_path, reference, start_job, seed):
  plan = _kill_plan(seed)
  _kill_and_resume(start_job, tmp_path, reference, plan,
                   f"seed {seed}, kills {plan}")


def test_sigkill_during_the_final_save_in_end(tmp_path, reference, start_job):
  # Step 22 is not a save step: it is saved by end(), and killed there.
  _kill_and_resume(start_job, tmp_path, reference, [("mid_save", LAST_STEP)],
                   "kill during the final save")


def test_sigkill_from_outside_at_a_seeded_line(tmp_path, reference,
                                               start_job):
  # The job holds before it exits, so the kill always finds it alive,
  # wherever it got to after printing the chosen line.
  seed = SEEDS[0]
  target = random.Random(seed).choice(reference[1])
  where = f"seed {seed}, kill on the line {target!r}"
  ckpt = tmp_path / "ckpt"
  job = start_job(ckpt, tmp_path / "out.npz", "--hold")
  while (line := job.next_line()) != target:
    assert line is not None, f"{where}: {job.stderr[-2000:]}"
  job.proc.kill()
  assert job.wait() == -signal.SIGKILL, where
  start = max(_steps_on_disk(ckpt), default=0)
  code, lines, stderr = _run(start_job, ckpt, tmp_path / "out.npz")
  assert code == 0, f"{where}: {stderr[-2000:]}"
  assert lines[0] == f"start {start}", where
  _assert_identical(tmp_path / "out.npz", reference[0], where)


def test_sigterm_saves_the_agreed_step_and_exits_cleanly(tmp_path, reference,
                                                         start_job):
  ckpt = tmp_path / "ckpt"
  job = start_job(ckpt, tmp_path / "first.npz", "--pause-at", "6")
  while (line := job.next_line()) != "paused 6":
    assert line is not None, job.stderr
  job.proc.send_signal(signal.SIGTERM)
  job.send("go\n")
  assert job.wait() == 0, job.stderr
  # The notice is seen before step 7 starts: step 7 is saved, written, and
  # the loop stops cleanly after it.
  assert job.lines[-3:] == [
      "saved 7", "step 7",
      "done 7 stop_reasons=('a hook requested stop at step 7',)"]
  assert _steps_on_disk(ckpt) == [4, 7]
  assert _tmp_dirs(ckpt) == []
  code, lines, stderr = _run(start_job, ckpt, tmp_path / "out.npz")
  assert code == 0, stderr
  steps = [int(l.split()[1]) for l in lines if l.startswith("step ")]
  assert lines[0] == "start 7" and steps == list(range(8, LAST_STEP + 1))
  _assert_identical(tmp_path / "out.npz", reference[0])
