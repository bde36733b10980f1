"""A thread that ends a multi-process job which cannot go on.

The step's program holds collectives that wait for every process: a peer
that died, or that is alive but stuck (in its own data loading, say),
blocks the others inside the runtime, where no Python code runs and no
check step is ever reached. The :class:`Watchdog` of each process does not
need its main thread::

  every poll_secs, on a thread of its own, while the loop runs:
    publish  jaxhooks/<n>/beat/<this process> = {beat, step, where}
        (where: the function the main thread is in)
    read the beats of the other processes
    a process whose beat stopped for timeout_secs     -> lost (it died)
        (not while the main thread waits in a check: the check raises)
    no step completed here for stall_timeout_secs     -> stalled
    lost or stalled: log the error (the step, what the main thread waits
        in, where the other processes are), dump every thread's stack to
        stderr, end the process with exit code EXIT_CODE

  a check raised CoordinationTimeoutError (a peer is lost):
    at interpreter exit: end the process with EXIT_CODE at once (not in
        jax.distributed's shutdown, which waits for the lost peer)
    still alive timeout_secs later (stuck in a write or an atexit
        handler that waits for the peer): end it with EXIT_CODE

Pending checkpoint writes are not waited for when the watchdog ends the
process: their last phase is a barrier of every process, which the stuck
or lost one never reaches. Orbax writes a step into a temporary directory
that becomes a checkpoint only once complete, so the restart resumes from
the last complete checkpoint.
"""

from __future__ import annotations

import atexit
import faulthandler
import json
import logging
import os
import sys
import threading
import time
from types import FrameType
from typing import Any, Callable, Dict, Optional, Tuple

from jaxhooks.errors import CoordinationTimeoutError, StallError

__all__ = ["EXIT_CODE", "Watchdog", "end_process", "exit_now",
           "main_thread_location"]

log = logging.getLogger("jaxhooks")

#: The exit status of a process the watchdog ends (EX_TEMPFAIL: a scheduler
#: should restart the job).
EXIT_CODE = 75

_LIBRARIES = (os.sep + "jax" + os.sep, os.sep + "jaxlib" + os.sep,
              os.sep + "numpy" + os.sep, os.sep + "threading.py")


def _frame_name(frame: Any) -> str:
  code = frame.f_code
  path = os.sep.join(code.co_filename.split(os.sep)[-2:])
  return f"`{code.co_name}` ({path}:{frame.f_lineno})"


def main_thread_location() -> str:
  """Where the main thread is: its innermost function and, when that is
  inside jax or numpy, the innermost caller outside them."""
  ident = threading.main_thread().ident
  frame = None if ident is None else sys._current_frames().get(ident)
  if frame is None:
    return "an unknown place"
  where = _frame_name(frame)
  caller: Optional[FrameType] = frame
  while caller is not None and any(
      lib in caller.f_code.co_filename for lib in _LIBRARIES):
    caller = caller.f_back
  if caller is not None and caller is not frame:
    where += f", called from {_frame_name(caller)}"
  return where


def end_process(error: BaseException) -> None:
  """Dumps every thread's stack to stderr and ends the process with
  :data:`EXIT_CODE` (the watchdog logged ``error``)."""
  del error
  try:
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
  except Exception:  # no file descriptor behind stderr
    pass
  exit_now()


def exit_now() -> None:
  """Flushes the output and the logs and ends the process with
  :data:`EXIT_CODE`, running no other exit handler."""
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except Exception:
      pass
  logging.shutdown()
  os._exit(EXIT_CODE)


class Watchdog:
  """Ends this process when a peer is lost or the loop makes no progress.

  Args:
    client: the ``jax.distributed`` key-value client.
    namespace: the coordinator's key prefix.
    process_index, process_count: this process and the job's size.
    timeout_secs: a peer whose beat stops this long is lost.
    stall_timeout_secs: the longest time without a completed step.
    check_every_n_steps: the coordinator's check period (for messages).
    clock: time source.
    end: called with the error instead of :func:`end_process` (tests).
    poll_secs: the period of the thread (a quarter of the shorter timeout,
      at most 1 s, by default).

  Example:
    >>> class Store(dict):
    ...   def key_value_set(self, k, v, allow_overwrite=False): self[k] = v
    ...   def key_value_try_get(self, k): return self[k]
    >>> now, ended = [0.0], []
    >>> dog = Watchdog(client=Store(), namespace="ns", process_index=0,
    ...                process_count=2, timeout_secs=60, stall_timeout_secs=10,
    ...                check_every_n_steps=100, clock=lambda: now[0],
    ...                end=ended.append)
    >>> dog.watch(lambda: 7)          # the loop is stuck after step 7
    >>> now[0] = 10.0; dog.poll()
    False
    >>> print(str(ended[0]).split(":")[0])
    Process 0 made no progress for 10 s after step 7 (`stall_timeout_secs`=10)
  """

  def __init__(self, *, client: Any, namespace: str, process_index: int,
               process_count: int, timeout_secs: float,
               stall_timeout_secs: float, check_every_n_steps: int,
               clock: Callable[[], float] = time.monotonic,
               end: Optional[Callable[[BaseException], None]] = None,
               poll_secs: Optional[float] = None):
    self._client = client
    self._ns = namespace
    self._me = process_index
    self._count = process_count
    self._timeout = float(timeout_secs)
    self._stall = float(stall_timeout_secs)
    self._check_every = check_every_n_steps
    self._clock = clock
    self._end = end or end_process
    self.poll_secs = poll_secs or min(1.0, self._timeout / 4,
                                      self._stall / 4)
    self._progress: Optional[Callable[[], Optional[int]]] = None
    self._beat = 0
    self._step: Optional[int] = None
    self._step_since = 0.0
    self._peers: Dict[int, Tuple[int, float, dict]] = {}
    self._exit_by: Optional[float] = None
    self._lost: Optional[BaseException] = None
    self._ending: Optional[Tuple[BaseException, float]] = None
    self._thread: Optional[threading.Thread] = None
    self._wake = threading.Event()
    #: Set by the coordinator while its main thread waits in a check.
    self.in_check = False

  def watch(self, progress: Callable[[], Optional[int]], *,
            thread: bool = False) -> None:
    """Starts watching: ``progress()`` is the loop's step while it runs,
    ``None`` once it ended. ``thread``: poll on a daemon thread."""
    self._progress = progress
    self._step, self._step_since = progress(), self._clock()
    if thread and self._thread is None:
      self._thread = threading.Thread(target=self._run, daemon=True,
                                      name="jaxhooks-watchdog")
      self._thread.start()

  def _run(self) -> None:
    while self.poll():
      self._wake.wait(self.poll_secs)
    self._thread = None

  def stop(self) -> None:
    """The loop ended: the thread says so to the other processes and ends,
    and this waits for it, so that the interpreter's exit never cuts the
    thread inside a call into the runtime (which aborts the process). After
    a lost peer or an error it goes on: it still has to end the process."""
    thread = self._thread
    if thread is None or self._lost is not None or self._ending is not None:
      return
    self._wake.set()
    thread.join(timeout=max(5.0, 4 * self.poll_secs))

  @property
  def lost(self) -> Optional[BaseException]:
    """The error of a check that lost a peer (see :meth:`peer_lost`)."""
    return self._lost

  def peer_lost(self, error: BaseException) -> None:
    """A check raised ``error``: end the process at interpreter exit, and
    at the latest ``timeout_secs`` from now."""
    if self._lost is None:
      self._lost = error
      self._exit_by = self._clock() + self._timeout
      atexit.register(exit_now)   # runs before jax.distributed's shutdown

  def poll(self) -> bool:
    """One round of the thread; ``False`` once nothing is left to watch."""
    now = self._clock()
    if self._ending is not None:
      return self._end_after_peers(now)
    if self._exit_by is not None:   # a check lost a peer: only the exit
      if now < self._exit_by:
        return True
      return self._fire(StallError(
          self._me, self._step, self._timeout, "timeout_secs",
          f" since a check raised: {self._lost} The process did not exit: "
          f"its main thread is in {main_thread_location()}"), now)
    step = None if self._progress is None else self._progress()
    if step is None:
      self._publish({"done": True})
      return False
    if step != self._step:
      self._step, self._step_since = step, now
    self._publish({"step": step, "where": main_thread_location()})
    self._read_peers(now)
    error = self._lost_peer(now, step)
    if error is None and now - self._step_since >= self._stall:
      error = StallError(self._me, step, self._stall, "stall_timeout_secs",
                         f": its main thread is in {main_thread_location()}"
                         + self._peer_summary())
    return True if error is None else self._fire(error, now)

  def _fire(self, error: BaseException, now: float) -> bool:
    """Reports ``error``, tells the other processes and ends this one."""
    log.critical("%s: %s (exit code %d)", type(error).__name__, error,
                 EXIT_CODE)
    self._publish({"ended": True, "step": self._step,
                   "where": main_thread_location()})
    self._ending = (error, now + self._timeout)
    return self._end_after_peers(now)

  def _end_after_peers(self, now: float) -> bool:
    """Ends the process. Process 0 runs the coordination service: when it
    ends, JAX aborts the others before their watchdogs report. It first
    waits (``timeout_secs`` at most) while another process still beats."""
    assert self._ending is not None, "set by _fire before the process ends"
    error, deadline = self._ending
    if self._me == 0 and now < deadline:
      self._read_peers(now)
      if any(not beat.get("ended") and not beat.get("done")
             and now - since < 2 * self.poll_secs
             for _, since, beat in self._peers.values()):
        return True
    self._end(error)
    return False

  def _publish(self, beat: dict) -> None:
    self._beat += 1
    try:
      self._client.key_value_set(f"{self._ns}/beat/{self._me}",
                                 json.dumps({"beat": self._beat, **beat}),
                                 allow_overwrite=True)
    except Exception:  # the service is gone: the peers' beats stop too
      pass

  def _read_peers(self, now: float) -> None:
    for q in range(self._count):
      if q == self._me:
        continue
      try:
        beat = json.loads(self._client.key_value_try_get(
            f"{self._ns}/beat/{q}"))
      except Exception:  # not started yet, or the service is gone
        continue
      seen = self._peers.get(q)
      if seen is None or seen[0] != beat["beat"]:
        self._peers[q] = (beat["beat"], now, beat)

  def _lost_peer(self, now: float, step: int) -> Optional[BaseException]:
    if self.in_check:   # the check's own deadline names the peer
      return None
    for q, (_, since, beat) in sorted(self._peers.items()):
      if (not beat.get("done") and not beat.get("ended")
          and now - since >= self._timeout):
        check = (step // self._check_every + 1) * self._check_every
        return CoordinationTimeoutError(
            check, q, self._timeout,
            f" (no heartbeat from it since its step {beat.get('step')}; "
            f"this process is at step {step}, its main thread in "
            f"{main_thread_location()})")
    return None

  def _peer_summary(self) -> str:
    parts = []
    for q, (_, _, beat) in sorted(self._peers.items()):
      parts.append(f"process {q}: " + ("done" if beat.get("done") else
                                       f"step {beat.get('step')}, in "
                                       f"{beat.get('where')}")
                   + (" (ended)" if beat.get("ended") else ""))
    return (". The other processes: " + "; ".join(parts)) if parts else ""
