"""The private JAX attributes jaxhooks reads, one function each.

JAX has no public way to ask which arguments a ``jax.jit`` function donates,
nor for the key-value client of ``jax.distributed``. Every read of a private
JAX name in jaxhooks goes through this module, and
``tests/test_jax_private.py`` checks each on the installed JAX, so a JAX
release that moves one fails that test by name instead of changing what
jaxhooks does. What each function does when its name is gone is part of its
contract: a documented safe fallback or a clear error, never a silent wrong
answer.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Tuple

import jax

__all__ = ["jit_donate_argnums", "distributed_client"]

_log = logging.getLogger("jaxhooks")
_warned: list = []  # one warning per process when `_jit_info` is gone


def jit_donate_argnums(fn: Any) -> Optional[Tuple[int, ...]]:
  """The positions of the arguments a ``jax.jit`` function donates.

  Reads ``fn._jit_info.donate_argnums`` (private; JAX fills it from both
  ``donate_argnums`` and ``donate_argnames``).

  Returns:
    The donated positions (``()`` when none), or ``None`` when that is not
    known: ``fn`` is not a ``jax.jit`` function, or this JAX no longer has
    the attribute. Callers treat ``None`` as the safe case: the runner's own
    program does not donate (``wrap(donate_state=True)`` asks for it) and a
    plain call of ``fn`` is assumed to donate its state, so a save copies it
    first. A ``jax.jit`` function (it has the public ``lower`` and ``trace``)
    without the attribute also logs one warning naming it.

  >>> import jax
  >>> from jaxhooks.jax_private import jit_donate_argnums
  >>> jit_donate_argnums(jax.jit(lambda s, b: s, donate_argnums=0))
  (0,)
  >>> jit_donate_argnums(jax.jit(lambda s, b: s))
  ()
  >>> print(jit_donate_argnums(lambda s, b: s))
  None
  """
  info = getattr(fn, "_jit_info", None)
  argnums = getattr(info, "donate_argnums", None)
  if argnums is not None:
    return tuple(int(i) for i in argnums)
  if hasattr(fn, "lower") and hasattr(fn, "trace") and not _warned:
    _warned.append(True)
    _log.warning(
        "This JAX (%s) has no `_jit_info.donate_argnums` on jax.jit "
        "functions: jaxhooks cannot tell whether the train step donates its "
        "state, assumes it does (saves copy the state) and does not donate "
        "in its own program unless `donate_state=True` is passed.",
        jax.__version__)
  return None


def distributed_client() -> Any:
  """The ``jax.distributed`` key-value client of this process.

  Reads ``jax._src.distributed.global_state.client`` (private; the client
  Orbax uses too).

  Raises:
    RuntimeError: ``jax.distributed.initialize()`` was not called, or this
      JAX no longer has that attribute (the message names it and the JAX
      version; ``DistributedCoordinator(client=...)`` takes a client
      directly).

  >>> from jaxhooks.jax_private import distributed_client
  >>> distributed_client()
  Traceback (most recent call last):
  ...
  RuntimeError: DistributedCoordinator needs `jax.distributed.initialize()` to have been called in this process.
  """
  try:
    from jax._src import distributed
    client = distributed.global_state.client
  except (ImportError, AttributeError) as e:
    raise RuntimeError(
        f"This JAX ({jax.__version__}) has no "
        "`jax._src.distributed.global_state.client`, the key-value client "
        "jaxhooks reads; pass `client=` to DistributedCoordinator.") from e
  if client is None:
    raise RuntimeError(
        "DistributedCoordinator needs `jax.distributed.initialize()` to have "
        "been called in this process.")
  return client
