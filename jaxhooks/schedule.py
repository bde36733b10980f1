"""Which hooks a call runs, and how many steps it runs.

After every call that runs all hooks, the runner asks each hook for its
``next_step_of_interest`` and keeps the earliest (the *horizon*; check steps
of a multi-process coordinator count too)::

  n = min(steps_per_call, horizon - step)   # a fused call ends at the horizon
  call ends at the horizon, or first call,
    or the coordinator was woken, or lagged values wait  -> every hook
  else, hooks that answered None (no step of their own)
    and are due() now (a time trigger whose period passed) -> those only
  else                                                  -> no hook at all
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Tuple

__all__ = ["Schedule"]


class Schedule:
  """The runner's plan of calls.

  Args:
    steps_per_call: the most steps one call runs.
    check_every: the coordinator's check period (calls end on its
      multiples), or ``None``.

  Example:
    >>> class Every(object):
    ...   def __init__(self, n): self.n = n
    ...   def next_step_of_interest(self, step): return (step // self.n + 1) * self.n
    >>> plan = Schedule(steps_per_call=4, check_every=None)
    >>> hooks = (Every(10), Every(6))
    >>> plan.update(hooks, step=0)
    >>> plan.horizon, plan.chunk(0), plan.chunk(4)
    (6, 4, 2)
    >>> plan.select(4, 2) is hooks   # the call ends at step 6
    True
    >>> plan.full_next = False
    >>> plan.select(0, 4) is None   # no hook runs
    True
  """

  def __init__(self, *, steps_per_call: int, check_every: Optional[int]):
    self.steps_per_call = steps_per_call
    self.check_every = check_every
    self.horizon: Any = 0
    self.hooks: Tuple[Any, ...] = ()
    self.each_call: Tuple[Any, ...] = ()
    self.full_next = True

  def update(self, hooks: Sequence[Any], step: int,
             others: Sequence[Any] = ()) -> None:
    """Plans the calls after global step ``step``.

    Args:
      hooks: the hooks this process runs.
      step: the global step the last call ended at.
      others: hooks that run on other processes only (process 0's
        ``primary_only`` hooks, seen from another process): their steps cut
        calls here too, so every process runs calls of the same lengths.
    """
    horizon, each_call = math.inf, []
    for hook in tuple(hooks) + tuple(others):
      nxt = hook.next_step_of_interest(step)
      if nxt is None:
        if hook not in others:
          each_call.append(hook)
      elif nxt < horizon:
        horizon = nxt if nxt == math.inf else int(nxt)
    if self.check_every:
      horizon = min(horizon, (step // self.check_every + 1) * self.check_every)
    self.hooks = tuple(hooks)
    self.horizon, self.each_call = horizon, tuple(each_call)

  def chunk(self, start: int) -> int:
    """How many steps a call from global step ``start`` runs."""
    k = self.steps_per_call
    if k == 1 or self.horizon == math.inf:
      return k
    return max(1, min(k, self.horizon - start))

  def select(self, start: int, n: int,
             awake: bool = False) -> Optional[Sequence[Any]]:
    """The hooks a call of ``n`` steps from ``start`` runs: all of them (the
    very tuple given to ``update``), the due ``each_call`` ones, or
    ``None`` when it runs none."""
    if start + n >= self.horizon or self.full_next or awake:
      return self.hooks
    if not self.each_call:
      return None
    due = [h for h in self.each_call if h.due()]
    return due or None
