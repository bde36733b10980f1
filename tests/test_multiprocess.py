"""Real multi-process JAX: 2 processes x 2 CPU devices on 127.0.0.1, a
train state sharded over all 4 devices. Every test bounds its time and
kills what it started."""

import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

import pytest

pytestmark = pytest.mark.slow  # every test starts JAX processes

WORKER = pathlib.Path(__file__).with_name("mp_worker.py")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def spawn(commands, *, timeout=120):
  """Runs one command per process; returns (return codes, outputs). The
  outputs go to files, so that no process blocks on a full pipe while the
  others wait for it; whatever still runs at the deadline is killed."""
  # The processes import this checkout's jaxhooks, not an installed one.
  root = str(pathlib.Path(__file__).parents[1])
  path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
  env = {**os.environ, "JAX_NUM_CPU_DEVICES": "2", "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": path}
  with contextlib.ExitStack() as stack:
    logs = [stack.enter_context(tempfile.TemporaryFile("w+"))
            for _ in commands]
    procs = []
    try:
      for cmd, log in zip(commands, logs):
        procs.append(subprocess.Popen(cmd, env=env, stdout=log,
                                      stderr=subprocess.STDOUT, text=True))
      deadline = time.monotonic() + timeout
      for p in procs:
        try:
          p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
          break
    finally:
      killed = [p.poll() is None for p in procs]
      for p, kill in zip(procs, killed):
        if kill:
          p.kill()
          p.wait(timeout=30)
    outs = []
    for log, kill in zip(logs, killed):
      log.seek(0)
      outs.append(log.read() + (f"\n[killed at the {timeout} s deadline]"
                                if kill else ""))
  return [p.returncode for p in procs], outs


def run_job(scenario, tmp_path, *args, nproc=2, timeout=120, expect_rc=None):
  """Starts the worker processes, waits for all, returns their results."""
  port = _free_port()
  for old in tmp_path.glob("result-*.json"):
    old.unlink()
  rcs, outs = spawn([
      [sys.executable, str(WORKER), scenario, str(i), str(nproc), str(port),
       str(tmp_path), *map(str, args)] for i in range(nproc)], timeout=timeout)
  expected = [0] * nproc if expect_rc is None else expect_rc
  assert rcs == expected, "\n".join(o[-3000:] for o in outs)
  results = {}
  for i in range(nproc):
    path = tmp_path / f"result-{i}.json"
    if path.exists():
      results[i] = json.loads(path.read_text())
  return results


def test_stop_at_step_stops_both_processes_at_the_same_exact_step(tmp_path):
  r = run_job("stop_at_step", tmp_path)
  assert r[0]["steps"] == r[1]["steps"] == [1, 2, 3, 4, 5, 6, 7]
  assert r[0]["final"] == r[1]["final"] == 7
  assert r[0]["w"] == r[1]["w"] and len(r[0]["w"]) == 16
  # Logging is primary-only: process 0 writes, process 1 does not.
  assert [line.split(" (")[0] for line in r[0]["logged"]] == [
      "step = 3", "step = 6"]
  assert r[1]["logged"] == []


def test_one_process_request_stop_is_agreed_at_the_next_check(tmp_path):
  r = run_job("local_stop", tmp_path)
  # Process 1 asks at step 12; check steps are multiples of 5: both stop
  # after step 15.
  assert r[0]["final"] == r[1]["final"] == 15
  assert r[0]["steps"] == r[1]["steps"] == list(range(1, 16))
  reason = "agreed at step 15: process 1: a hook requested stop at step 12"
  assert r[0]["reasons"] == r[1]["reasons"] == [reason]


def test_time_trigger_is_decided_on_process_0_and_shared(tmp_path):
  r = run_job("time_stop", tmp_path)
  # Only process 0's clock moves, 3 s per reading. Its timer fires at the
  # first check step (4, marked at t=3); the checks of steps 8, 12, 16 read
  # t=6, 9, 12: 8 s have passed at step 16. Process 1 fires with it.
  assert r[0]["fired"] == r[1]["fired"] == [4, 16]
  assert r[0]["final"] == r[1]["final"] == 16


def test_a_dead_process_makes_the_other_fail_with_a_clear_error(tmp_path):
  start = time.monotonic()
  r = run_job("dies", tmp_path, expect_rc=[3, 17], timeout=90)
  assert time.monotonic() - start < 60
  assert r[0]["step"] == 10 and r[0]["missing"] == 1
  assert r[0]["error"].startswith(
      "Process 1 did not arrive at the check of step 10 within 4 s (")
  assert 1 not in r


def test_global_step_waiter_waits_for_another_process(tmp_path):
  r = run_job("waiter", tmp_path)
  assert r[0]["steps"] == list(range(1, 21))
  assert r[1]["steps"] == [1, 2]
  assert r[1]["last_seen"] >= 12


def test_async_orbax_checkpoint_written_and_restored_by_both(tmp_path):
  ckpt = tmp_path / "ckpt"
  first = run_job("ckpt", tmp_path, ckpt, 10)
  assert first[0]["saved"] == first[1]["saved"] == [4, 8, 10]
  assert first[0]["restored"] is None
  second = run_job("ckpt", tmp_path, ckpt, 14)
  assert second[0]["restored"] == second[1]["restored"] == 10
  assert second[0]["steps"] == second[1]["steps"] == [11, 12, 13, 14]
  # The restored state is sharded over all 4 devices again.
  assert len(second[0]["all_devices"]) == 4
  assert second[0]["shard_devices"] == second[0]["all_devices"]
  straight = run_job("ckpt", tmp_path, tmp_path / "straight", 14)
  assert second[0]["w"] == second[1]["w"] == straight[0]["w"]


def test_sigterm_on_one_process_saves_the_same_step_on_both(tmp_path):
  ckpt = tmp_path / "ckpt"
  # Process 1 alone gets SIGTERM after step 6; the next check step is 10:
  # both save step 10, stop there and exit cleanly.
  first = run_job("ckpt", tmp_path, ckpt, 30, 6)
  assert first[0]["final"] == first[1]["final"] == 10
  assert first[0]["saved"] == first[1]["saved"] == [4, 8, 10]
  # A restart of both resumes from step 10, losing and repeating nothing.
  second = run_job("ckpt", tmp_path, ckpt, 30)
  assert second[0]["restored"] == second[1]["restored"] == 10
  assert second[0]["steps"] == list(range(11, 31))
  straight = run_job("ckpt", tmp_path, tmp_path / "straight", 30)
  assert second[0]["w"] == second[1]["w"] == straight[0]["w"]


def test_each_process_saves_and_restores_its_own_data_position(tmp_path):
  ckpt = tmp_path / "ckpt"
  r = run_job("data", tmp_path, ckpt)
  # [restored step, position after restore, final position] per session;
  # process 1 reads 2 items per step.
  assert r[0]["positions"] == [[None, 0, 6], [6, 6, 8]]
  assert r[1]["positions"] == [[None, 0, 12], [6, 12, 16]]
  files = {f.name: json.loads(f.read_text())
           for f in (ckpt / "8" / "data").glob("metadata*")}
  assert files == {"metadata": {"position": 8},
                   "metadata.process_1": {"position": 16}}


def test_multiprocess_digits_example_trains_and_resumes(tmp_path):
  example = pathlib.Path(__file__).parents[1] / "examples" / "multiprocess_digits.py"
  def job(steps):
    port = _free_port()
    rcs, outs = spawn([
        [sys.executable, str(example), "--process-id", str(i),
         "--num-processes", "2", "--port", str(port), "--steps", str(steps),
         "--save-every", "40", "--checkpoint-dir", str(tmp_path / "ckpt")]
        for i in range(2)], timeout=150)
    assert rcs == [0, 0], "\n".join(o[-3000:] for o in outs)
    return outs
  outs = job(80)
  assert "trained to step 80; test accuracy" in outs[0]
  assert "[process 1]" not in outs[1]  # logs are written by process 0 only
  assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["40", "80"]
  outs = job(120)
  assert "Restored the checkpoint of step 80" in outs[0]
  assert "trained to step 120" in outs[0]


def test_sigterm_on_one_process_of_a_fused_loop_saves_the_check_step(
    tmp_path):
  # Items 7 and 9: process 1 alone gets SIGTERM after step 8, just before
  # the call that ends at the check step 10. Both processes keep the same
  # 4-step calls, share the notice at step 10, save it and exit cleanly.
  r = run_job("preempt_fused", tmp_path, tmp_path / "ckpt")
  assert r[0]["calls"] == r[1]["calls"] == [[0, 4], [4, 8], [8, 10]]
  assert r[0]["saved"] == r[1]["saved"] == [10]
  assert r[0]["final"] == r[1]["final"] == 10


def outputs_of(scenario, tmp_path, *args, timeout):
  """Runs a job whose processes end without results; returns their return
  codes, their outputs and the seconds the job took."""
  port = _free_port()
  start = time.monotonic()
  rcs, outs = spawn([
      [sys.executable, str(WORKER), scenario, str(i), "2", str(port),
       str(tmp_path), *args] for i in range(2)], timeout=timeout)
  return rcs, outs, time.monotonic() - start


def test_a_stuck_peer_ends_both_processes_with_a_clear_error(tmp_path):
  # Item 6: process 1 hangs in its data loading before step 12; process 0
  # waits in step 12's collectives and no check comes before step 1000.
  # Both watchdogs end their process after 6 s without a step.
  rcs, outs, secs = outputs_of("stuck", tmp_path, timeout=120)
  assert rcs == [75, 75], "\n".join(o[-3000:] for o in outs)
  assert secs < 90
  stall = ("StallError: Process {} made no progress for 6 s after step 11 "
           "(`stall_timeout_secs`=6): its main thread is in ")
  line0 = next(l for l in outs[0].splitlines() if "StallError" in l)
  line1 = next(l for l in outs[1].splitlines() if "StallError" in l)
  assert stall.format(0) in line0 and stall.format(1) in line1
  assert "called from `_read` (jaxhooks/runner.py:" in line0
  assert "The other processes: process 1: step 11, in `wait` (" in line0
  assert "called from `next_batch` (tests/mp_worker.py:" in line0
  assert "called from `next_batch` (tests/mp_worker.py:" in line1
  assert line0.endswith("; ending the process instead of hanging. "
                        "(exit code 75)")


@pytest.mark.parametrize("wait_in", ["check", "step"])
def test_a_sigkilled_peer_gives_the_coordination_error_and_a_prompt_exit(
    tmp_path, wait_in):
  # Item 8: process 0 kills process 1 (SIGKILL) after step 6, then waits in
  # the check of step 10, or in step 7's collectives. Either way it reports
  # CoordinationTimeoutError after timeout_secs=4 and exits with code 75 at
  # once: not aborted by JAX's heartbeat (10 s here, rc -6), not waiting in
  # jax.distributed's shutdown for the dead peer.
  rcs, outs, secs = outputs_of("killed", tmp_path, wait_in, timeout=120)
  assert rcs == [75, -9], "\n".join(o[-3000:] for o in outs)
  assert secs < 60
  error = ("CoordinationTimeoutError: Process 1 did not arrive at the check "
           "of step 10 within 4 s (")
  if wait_in == "check":
    assert "jaxhooks.errors." + error in outs[0]
  else:
    line = next(l for l in outs[0].splitlines() if error in l)
    assert line.startswith("CRITICAL:jaxhooks:" + error + "no heartbeat from "
                           "it since its step ")
    assert ("; this process is at step 6, its main thread in `_value` ("
            in line)
    assert "called from `_read` (jaxhooks/runner.py:" in line
    assert line.endswith("); stopping instead of hanging. (exit code 75)")
