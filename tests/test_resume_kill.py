"""Kill-and-resume: a real training process (tests/resume_job.py) is killed
with SIGKILL at several points, including in the middle of a save, or
preempted with SIGTERM; restarted, it must end with the params, optimizer
state, step and data position of an uninterrupted run, bit for bit."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
JOB = os.path.join(HERE, "resume_job.py")
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}


def _start(ckpt_dir, out, *extra):
  return subprocess.Popen(
      [sys.executable, JOB, str(ckpt_dir), str(out), *extra],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True, env=ENV)


def _run(ckpt_dir, out, *extra):
  proc = _start(ckpt_dir, out, *extra)
  stdout, stderr = proc.communicate(timeout=120)
  return proc.returncode, stdout.splitlines(), stderr


def _tmp_dirs(ckpt_dir):
  return sorted(d for d in os.listdir(ckpt_dir) if "tmp" in d)


def _steps_on_disk(ckpt_dir):
  return sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())


def _assert_identical(out, reference):
  got, want = np.load(out), np.load(reference)
  assert sorted(got.files) == sorted(want.files)
  for key in want.files:
    assert got[key].dtype == want[key].dtype, key
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  assert int(got["step"]) == 20 and int(got["position"]) == 20


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted run."""
  root = tmp_path_factory.mktemp("reference")
  code, lines, stderr = _run(root / "ckpt", root / "out.npz")
  assert code == 0, stderr
  assert lines[0] == "start 0"
  assert [l for l in lines if l.startswith("saved")] == [
      "saved 4", "saved 8", "saved 12", "saved 16", "saved 20"]
  assert _steps_on_disk(root / "ckpt") == [4, 8, 12, 16, 20]
  return root / "out.npz"


@pytest.mark.parametrize("kills", [
    [("mid_save", 4)],                      # the first save never completes
    [("after_step", 10)],                   # between saves
    [("mid_save", 12), ("after_step", 14)], # two kills in a row
    [("mid_save", 20)],                     # the last save
], ids=lambda k: "+".join(f"{how}@{s}" for how, s in k))
def test_sigkill_then_resume_is_bit_identical(tmp_path, reference, kills):
  ckpt = tmp_path / "ckpt"
  start = 0
  for how, at in kills:
    code, lines, _ = _run(ckpt, tmp_path / "out.npz", "--die-at", str(at),
                          "--die-how", how)
    assert code == -signal.SIGKILL
    assert lines[0] == f"start {start}"
    assert lines[-1] == (f"saved {at}" if how == "mid_save" else f"step {at}")
    done = [s for s in _steps_on_disk(ckpt) if s <= at]
    if how == "mid_save":
      # Killed while step `at` was being written: only its temporary
      # directory is there, and restore must ignore it.
      assert f"{at}.orbax-checkpoint-tmp" in " ".join(_tmp_dirs(ckpt))
      assert at not in done
    start = max(done, default=0)
  code, lines, stderr = _run(ckpt, tmp_path / "out.npz")
  assert code == 0, stderr
  assert lines[0] == f"start {start}"
  assert lines[1] == f"step {start + 1}"
  assert _tmp_dirs(ckpt) == []
  _assert_identical(tmp_path / "out.npz", reference)


def test_sigkill_from_outside_at_a_random_point(tmp_path, reference):
  ckpt = tmp_path / "ckpt"
  proc = _start(ckpt, tmp_path / "out.npz")
  for line in proc.stdout:
    if line.strip() == "step 5":
      proc.kill()
      break
  proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  start = max(_steps_on_disk(ckpt), default=0)
  code, lines, stderr = _run(ckpt, tmp_path / "out.npz")
  assert code == 0, stderr
  assert lines[0] == f"start {start}"
  _assert_identical(tmp_path / "out.npz", reference)


def test_sigterm_saves_the_agreed_step_and_exits_cleanly(tmp_path, reference):
  ckpt = tmp_path / "ckpt"
  proc = _start(ckpt, tmp_path / "first.npz", "--pause-at", "6")
  first = []
  for line in proc.stdout:
    first.append(line.strip())
    if first[-1] == "paused 6":
      proc.send_signal(signal.SIGTERM)
      proc.stdin.write("go\n")
      proc.stdin.flush()
      break
  stdout, stderr = proc.communicate(timeout=60)
  first += stdout.splitlines()
  assert proc.returncode == 0, stderr
  # The notice is seen before step 7 starts: step 7 is saved, written, and
  # the loop stops cleanly after it.
  assert first[-3:] == [
      "saved 7", "step 7",
      "done 7 stop_reasons=('a hook requested stop at step 7',)"]
  assert _steps_on_disk(ckpt) == [4, 7]
  assert _tmp_dirs(ckpt) == []
  code, lines, stderr = _run(ckpt, tmp_path / "out.npz")
  assert code == 0, stderr
  steps = [int(l.split()[1]) for l in lines if l.startswith("step ")]
  assert lines[0] == "start 7" and steps == list(range(8, 21))
  _assert_identical(tmp_path / "out.npz", reference)
