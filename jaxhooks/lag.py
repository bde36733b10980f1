"""Lagged fetch delivery (``wrap(..., lag_fetches=True)``).

A hook with ``accepts_lagged_fetches`` that fetches at step N gets its
values in an ``after_run`` made during the next call, after that call's
step is dispatched, so the loop never waits for step N to finish::

  call N:    before_run(N) asks -> device values held (not read)
  call N+1:  before_run(N+1); dispatch N+1; read step N's values with this
             call's reads; after_run(N, values); after_run(N+1)
  stop at N, or end(): the held values are read and delivered at once
"""

from __future__ import annotations

from typing import Any, Callable, List, NamedTuple, Optional, Sequence

from jaxhooks import fetch
from jaxhooks.hook import Hook, RunContext, RunValues

__all__ = ["Lagged", "lagging", "hold", "deliver"]


class Lagged(NamedTuple):
  """The fetches of one call, held for delivery during the next.

  Example:
    >>> import jaxhooks as jh
    >>> held = Lagged(ctx=None, hooks=(), device=[])
    >>> held.device
    []
  """

  ctx: RunContext
  hooks: tuple
  device: List[Any]


def lagging(hooks: Sequence[Hook], fetches: Sequence[Any]) -> List[int]:
  """Indices of the hooks whose fetches of this call are held."""
  return [i for i, f in enumerate(fetches)
          if f is not None and hooks[i].accepts_lagged_fetches]


def hold(ctx: RunContext, hooks: Sequence[Hook], fetches: Sequence[Any],
         state: Any, outputs: Any,
         step_fn: Callable[[Any], Any]) -> Lagged:
  """Resolves ``fetches`` to device values (nothing is read)."""
  return Lagged(ctx, tuple(hooks),
                fetch.device_fetches(list(fetches), state, outputs, step_fn))


def deliver(held: Optional[Lagged], values: Sequence[Any], coord: Any) -> None:
  """Calls each held hook's ``after_run`` with its host ``values``; a stop
  it requests goes to ``coord`` (it takes effect after the current call)."""
  if held is None:
    return
  ctx = held.ctx
  for hook, res in zip(held.hooks, values):
    if hook.after_run(ctx, RunValues(results=res, step=ctx.step)) is True:
      ctx.request_stop()
  if ctx.stop_requested:
    coord.request_stop(f"a hook requested stop at step {ctx.step}")
