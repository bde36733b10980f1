"""Small general hooks: ``FinalOpsHook``, ``FeedFnHook`` and ``LambdaHook``."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Optional

from jaxhooks import fetch
from jaxhooks.hook import NEVER, Hook, RunArgs, RunContext, RunValues, Session

__all__ = ["FinalOpsHook", "FeedFnHook", "LambdaHook"]


def _takes_two(fn: Callable) -> bool:
  """True when ``fn`` accepts two positional arguments."""
  try:
    inspect.signature(fn).bind(None, None)
    return True
  except TypeError:
    return False
  except ValueError:  # no signature (some builtins): assume one argument
    return False


class FinalOpsHook(Hook):
  """Reads functions of the final state in ``end``.

  Args:
    final_ops: a function of the state, or a list/dict of them; each gets
      ``(state)`` (or ``(state, outputs)`` if it takes two arguments).
    final_ops_feed_dict: kept for TensorFlow compatibility; must be None.

  Example:
    >>> import jax.numpy as jnp
    >>> import jaxhooks as jh
    >>> hook = jh.FinalOpsHook({"norm": lambda s: jnp.sum(s["w"] ** 2)})
    >>> hook.end(jh.Session({"w": jnp.array([3.0, 4.0])}, 10))
    >>> hook.final_ops_values
    {'norm': 25.0}
  """

  def __init__(self, final_ops: Any, final_ops_feed_dict: Any = None):
    if final_ops_feed_dict is not None:
      raise ValueError(
          "`final_ops_feed_dict` has no meaning in JAX; got "
          f"{final_ops_feed_dict!r}. Close over the values in `final_ops`.")
    leaves = fetch.jax.tree_util.tree_leaves(final_ops, is_leaf=callable)
    if not leaves or not all(callable(x) for x in leaves):
      raise ValueError(
          "`final_ops` must be a function of the state or a list/dict of "
          f"them, got {final_ops!r}.")
    self._final_ops = final_ops
    self._values = None

  @property
  def final_ops_values(self) -> Any:
    """Host values of ``final_ops`` after ``end``."""
    return self._values

  def next_step_of_interest(self, step: int):
    return NEVER

  def end(self, session: Session) -> None:
    def call(op):
      if _takes_two(op):
        return op(session.state, session.outputs)
      return op(session.state)
    # A final op's exception (StopIteration too) reaches the caller as is.
    device = fetch.map_leaves(call, self._final_ops, is_leaf=callable)
    self._values = fetch.jax.tree_util.tree_map(
        lambda x: x.item() if getattr(x, "ndim", 1) == 0 else x,
        fetch.jax.device_get(device))


class FeedFnHook(Hook):
  """Supplies the batch of each step from ``feed_fn()``.

  Call the hooked step without a batch (``step(state)``); a dict from
  ``feed_fn`` is merged into a dict batch given to the call. ``StopIteration``
  from ``feed_fn`` ends training cleanly.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import jaxhooks as jh
    >>> batches = iter([jnp.ones(2), jnp.ones(2)])
    >>> step = jh.wrap(
    ...     jax.jit(lambda s, b: ({"step": s["step"] + 1, "w": s["w"] + b}, {})),
    ...     hooks=[jh.FeedFnHook(lambda: next(batches))])
    >>> state = step.begin({"step": jnp.array(0), "w": jnp.zeros(2)})
    >>> stop = False
    >>> while not stop:
    ...   state, _, stop = step(state)
    >>> state = step.end(state)
    >>> state["w"].tolist(), step.step
    ([2.0, 2.0], 2)
  """

  def __init__(self, feed_fn: Callable[[], Any]):
    if not callable(feed_fn):
      raise ValueError(f"`feed_fn` must be callable, got {feed_fn!r}.")
    self._feed_fn = feed_fn

  def next_step_of_interest(self, step: int):
    return None   # every call takes a feed; calls are not cut for it

  def before_run(self, run_context: RunContext) -> RunArgs:
    return RunArgs(feed_dict=self._feed_fn())


class LambdaHook(Hook):
  """A hook made of plain functions, for quick custom hooks.

  Each argument is optional and has the signature of the hook method of the
  same name. ``before_run`` may return ``RunArgs``; ``after_run`` may return
  ``True`` to stop.

  Example:
    >>> import jaxhooks as jh
    >>> seen = []
    >>> hook = jh.LambdaHook(after_run=lambda ctx, vals: seen.append(ctx.step))
    >>> hook.after_run(jh.RunContext(jh.RunArgs(), jh.Session(None, 0), 1, 0),
    ...                jh.RunValues(step=1))
    >>> seen
    [1]
  """

  def __init__(self, *, begin: Optional[Callable[[], None]] = None,
               after_create_session: Optional[Callable] = None,
               before_run: Optional[Callable] = None,
               after_run: Optional[Callable] = None,
               end: Optional[Callable] = None,
               primary_only: bool = False):
    fns: Dict[str, Optional[Callable[..., Any]]] = dict(
        begin=begin, after_create_session=after_create_session,
        before_run=before_run, after_run=after_run, end=end)
    for name, fn in fns.items():
      if fn is not None and not callable(fn):
        raise ValueError(f"`{name}` must be callable or None, got {fn!r}.")
    self._fns = fns
    self.primary_only = primary_only

  def begin(self) -> None:
    if self._fns["begin"]:
      self._fns["begin"]()

  def after_create_session(self, session: Session, coord: Any) -> None:
    if self._fns["after_create_session"]:
      self._fns["after_create_session"](session, coord)

  def next_step_of_interest(self, step: int):
    if self._fns["before_run"] or self._fns["after_run"]:
      return step + 1
    return NEVER

  def before_run(self, run_context: RunContext) -> Optional[RunArgs]:
    if self._fns["before_run"]:
      return self._fns["before_run"](run_context)
    return None

  def after_run(self, run_context: RunContext,
                run_values: RunValues) -> Optional[bool]:
    if self._fns["after_run"]:
      return self._fns["after_run"](run_context, run_values)
    return None

  def end(self, session: Session) -> None:
    if self._fns["end"]:
      self._fns["end"](session)
