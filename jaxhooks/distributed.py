"""Identical stop and timer decisions on every process of a JAX job.

Decisions that follow from the global step (``StopAtStepHook``, step
timers) are the same everywhere without a word exchanged. Host-local causes
— a hook's ``request_stop()`` on one process, SIGTERM on one host, a time
limit, an ``every_n_secs`` timer — are agreed at *check steps*, the global
steps that are multiples of ``check_every_n_steps``::

  at check step c (before the hooks' before_run):
    put {pending stop requests, process 0: due flags of time timers}
        under key  jaxhooks/<n>/check/<c>/<this process>
    read the same key of every other process (wait at most timeout_secs;
        a process that does not arrive -> CoordinationTimeoutError naming
        the step and the process)
    any process asked to stop -> every process stops after step c
    any process got a preemption notice -> every process saves step c
        (a notice is recorded as it arrives, from the signal handler, so
        the check right after it shares it; it changes no call before)
    time timers fire at step c where process 0's timer was due

The exchange goes through the key-value store of ``jax.distributed`` (the
coordination service), not through devices, so a dead peer cannot hang it:
the wait has a deadline. Nothing is exchanged on other steps. A peer that
dies or hangs between checks blocks the others inside the step's
collectives instead: the watchdog thread of each process
(``jaxhooks.watchdog``) ends such a job, and exits a process promptly
once a check lost a peer.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import jax

from jaxhooks.coord import Coordinator
from jaxhooks.errors import CoordinationTimeoutError
from jaxhooks.jax_private import distributed_client
from jaxhooks.timer import SecondOrStepTimer, check_period
from jaxhooks.watchdog import Watchdog

__all__ = ["DistributedCoordinator", "default_coordinator",
           "distributed_client"]

_namespaces = itertools.count()


def default_coordinator() -> Coordinator:
  """A :class:`DistributedCoordinator` in a multi-process job, else a
  single-process :class:`~jaxhooks.coord.Coordinator`."""
  if jax.process_count() > 1:
    return DistributedCoordinator()
  return Coordinator()


def _time_timers(hook: Any) -> List[SecondOrStepTimer]:
  """The time timers a hook declares (``Hook.timers()``)."""
  timers = list(hook.timers())
  for timer in timers:
    if not isinstance(timer, SecondOrStepTimer):
      raise TypeError(f"`{type(hook).__name__}.timers()` must return "
                      f"SecondOrStepTimer objects, got {timer!r}.")
  return [t for t in timers if t.every_secs is not None]


class DistributedCoordinator(Coordinator):
  """Agrees host-local stop requests and time triggers across processes.

  Args:
    check_every_n_steps: check steps are the multiples of this. A local stop
      request takes effect after the next check step; an ``every_n_secs``
      timer fires only at check steps.
    timeout_secs: how long a check waits for the other processes, and how
      long the watchdog waits for a peer's heartbeat before it calls that
      peer lost. Keep it below ``jax.distributed.initialize``'s
      ``heartbeat_timeout_seconds`` (100 by default): JAX aborts the
      processes of a job with a dead peer after that time.
    stall_timeout_secs: the longest time a process may complete no step
      (in the step's collectives, waiting for a stuck peer, or anywhere in
      the loop) before its watchdog ends it (exit code 75, see
      ``jaxhooks.watchdog``). It must cover the first call's compilation
      and anything the loop body does between steps (an evaluation).
    independent: the processes run loops of their own (no shared
      collectives, as an evaluator beside a trainer): checks then only
      publish the step, for ``GlobalStepWaiterHook``, and stops stay local.
    client: the key-value client (``distributed_client()`` by default).
    process_index, process_count: default to ``jax``'s.
    clock: time source for the deadline.

  Example:
    >>> class Store:  # a stand-in for the jax.distributed client
    ...   def __init__(self): self.kv = {}
    ...   def key_value_set(self, k, v, allow_overwrite=False): self.kv[k] = v
    ...   def blocking_key_value_get(self, k, ms): return self.kv[k]
    ...   def key_value_try_get(self, k): return self.kv[k]
    ...   def key_value_delete(self, k): self.kv.pop(k, None)
    >>> store = Store()
    >>> store.kv["ns/check/10/1"] = '{"stop": ["SIGTERM"], "due": []}'
    >>> coord = DistributedCoordinator(check_every_n_steps=10, client=store,
    ...     process_index=0, process_count=2, namespace="ns")
    >>> coord.check(10)
    >>> coord.should_stop(), coord.stop_reasons
    (True, ('agreed at step 10: process 1: SIGTERM',))
  """

  def __init__(self, *, check_every_n_steps: int = 100,
               timeout_secs: float = 60.0,
               stall_timeout_secs: float = 600.0, independent: bool = False,
               client: Any = None, process_index: Optional[int] = None,
               process_count: Optional[int] = None,
               namespace: Optional[str] = None,
               clock: Callable[[], float] = time.monotonic):
    super().__init__(process_index=process_index, process_count=process_count)
    check_period("check_every_n_steps", check_every_n_steps, allow_none=False)
    if int(check_every_n_steps) != check_every_n_steps:
      raise ValueError("`check_every_n_steps` must be a whole number, got "
                       f"{check_every_n_steps!r}.")
    check_period("timeout_secs", timeout_secs, allow_none=False)
    check_period("stall_timeout_secs", stall_timeout_secs, allow_none=False)
    self.check_every_n_steps = int(check_every_n_steps)
    self._timeout_secs = float(timeout_secs)
    self._independent = bool(independent)
    self._client = client if client is not None else distributed_client()
    self._ns = namespace or f"jaxhooks/{next(_namespaces)}"
    self._clock = clock
    self._pending: List[str] = []
    self._timers: List[SecondOrStepTimer] = []
    self._checks: List[int] = []
    self._preempt_notified = False
    self._preempt_step: Optional[int] = None
    self._watchdog = None if self._independent else Watchdog(
        client=self._client, namespace=self._ns,
        process_index=self.process_index, process_count=self.process_count,
        timeout_secs=self._timeout_secs,
        stall_timeout_secs=float(stall_timeout_secs),
        check_every_n_steps=self.check_every_n_steps, clock=clock)

  @property
  def timeout_secs(self) -> float:
    return self._timeout_secs

  @property
  def watchdog(self) -> Optional[Watchdog]:
    """The watchdog of this process (``None`` for independent loops)."""
    return self._watchdog

  @property
  def pending_requests(self) -> tuple:
    """Local stop requests not yet agreed."""
    return tuple(self._pending)

  def request_stop(self, reason: Any = "stop requested",
                   *, deterministic: bool = False) -> None:
    text = self._record(reason)   # an exception is raised here at the end
    if deterministic or self._independent or self.process_count == 1:
      self._reasons.append(text)
      self.wake()
    else:
      self._pending.append(text)

  def notify_preemption(self) -> None:
    """Records a notice as it arrives, for the next check to share (the
    check of the very next step, if it is one). Several processes: no
    :meth:`wake`, nothing changes on this process alone."""
    self._preempt_notified = True
    if self._independent or self.process_count == 1:
      self.wake()

  def next_preemption_step(self, step: int, *,
                           notified: bool) -> Optional[int]:
    if self._independent or self.process_count == 1:
      return super().next_preemption_step(step, notified=notified)
    return None   # the notice acts through the agreed check step only

  def agree_preemption_step(self, step: int, *,
                            notified: bool) -> Optional[int]:
    """The agreed preemption save step: a notice on any process is shared at
    the next check step, and every process saves at that step."""
    if notified:
      self._preempt_notified = True
      if self._independent or self.process_count == 1:
        return int(step)
    if self._preempt_step is not None and self._preempt_step == step:
      return int(step)
    return None

  def bind(self, hooks: Sequence[Any]) -> None:
    """Shares the time timers of hooks that run on every process."""
    if self._independent:
      return
    self._timers = [t for h in hooks if not h.primary_only
                    for t in _time_timers(h)]
    for timer in self._timers:
      timer.share_decisions()

  def watch(self, progress: Callable[[], Optional[int]]) -> None:
    """Starts the watchdog thread (see ``jaxhooks.watchdog``)."""
    if self._watchdog is not None and self.process_count > 1:
      self._watchdog.watch(progress, thread=True)

  def unwatch(self) -> None:
    """Stops the watchdog thread of a loop that ended (see
    ``Watchdog.stop``)."""
    if self._watchdog is not None:
      self._watchdog.stop()

  def _key(self, step: int, process: int) -> str:
    return f"{self._ns}/check/{step}/{process}"

  def _publish_step(self, step: int) -> None:
    self._client.key_value_set(f"{self._ns}/step/{self.process_index}",
                               str(step), allow_overwrite=True)

  def global_step(self) -> Optional[int]:
    if self.process_count == 1:
      return None
    steps = []
    for q in range(self.process_count):
      if q == self.process_index:
        continue
      try:
        steps.append(int(self._client.key_value_try_get(
            f"{self._ns}/step/{q}")))
      except Exception:  # not published yet
        steps.append(0)
    return max(steps)

  def check(self, step: int) -> None:
    self._publish_step(step)
    if self._independent:
      return
    me = self.process_index
    payload = {"stop": self._pending,
               "preempt": self._preempt_notified,
               "due": ([t.time_due() for t in self._timers]
                       if me == 0 else [])}
    self._client.key_value_set(self._key(step, me), json.dumps(payload))
    payloads: Dict[int, dict] = {me: payload}
    deadline = self._clock() + self._timeout_secs
    if self._watchdog is not None:
      self._watchdog.in_check = True
    try:
      for q in range(self.process_count):
        if q != me:
          payloads[q] = json.loads(self._exchange(step, q, deadline))
    finally:
      if self._watchdog is not None:
        self._watchdog.in_check = False
    self._forget_old_checks(step)
    requests = [f"process {q}: {r}" for q in sorted(payloads)
                for r in payloads[q]["stop"]]
    if requests:
      self._reasons.append(f"agreed at step {step}: " + "; ".join(requests))
      self._pending.clear()
    if self._preempt_step is None and any(
        p.get("preempt") for p in payloads.values()):
      self._preempt_step = step
    for timer, due in zip(self._timers, payloads[0]["due"]):
      timer.agree(step, bool(due))

  def _exchange(self, step: int, q: int, deadline: float) -> str:
    """Process ``q``'s payload of the check of ``step``."""
    wait_ms = max(1, int((deadline - self._clock()) * 1000))
    try:
      return self._client.blocking_key_value_get(self._key(step, q), wait_ms)
    except Exception as e:  # deadline passed or the service lost the peer
      detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
      error = CoordinationTimeoutError(step, q, self._timeout_secs,
                                       f" ({detail})")
      if self._watchdog is not None:   # the job cannot go on: exit promptly
        self._watchdog.peer_lost(error)
      raise error from e

  def _forget_old_checks(self, step: int) -> None:
    # Every other process read our key of the check before last by now.
    self._checks.append(step)
    if len(self._checks) > 2:
      old = self._checks.pop(0)
      try:
        self._client.key_value_delete(self._key(old, self.process_index))
      except Exception:  # the store is best-effort housekeeping
        pass
