"""The writes of one ``CheckpointSaverHook`` session, and what they reached.

``CheckpointWrites`` owns the Orbax manager and, for async saves in one
process, the writer thread (``jaxhooks.snapshot``). It keeps two steps::

  saved_step     the last step whose save was started (or restored)
  written_step   the last step known to be on disk

A failed write is raised at the next save, ``wait`` or ``close``; then
``saved_step`` falls back to ``written_step``, so that a later save (the
final one in ``end``, ``save_on_exception``) writes that step again.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional

from jaxhooks import checkpoint_io as cio
from jaxhooks.errors import CheckpointError
from jaxhooks.snapshot import BackgroundWriter, copy_mutable

__all__ = ["CheckpointWrites", "add_note"]

log = logging.getLogger("jaxhooks")


def add_note(exc: BaseException, error: Any) -> None:
  """Logs why a checkpoint was not saved (an error, or a message) and adds
  it as a note to ``exc``, which ends the loop."""
  log.error("While stopping on %s: %s", type(exc).__name__, error)
  exc.add_note(f"jaxhooks: checkpoint not saved: {error}")


class CheckpointWrites:
  """Saves into one Orbax ``CheckpointManager``.

  Args:
    manager: the manager (async only in multi-process jobs).
    directory: its directory, for error messages.
    writer: the worker thread of async saves in one process, or ``None``:
      then ``manager.save`` is called on the loop's thread.
    blocking: saves are synchronous (``manager.save`` returns once the step
      is written).

  Example:
    >>> import tempfile, jax.numpy as jnp
    >>> directory = tempfile.mkdtemp()
    >>> manager = cio.make_manager(directory, max_to_keep=2, keep_period=None,
    ...                            best_metric=None, best_mode="min",
    ...                            async_save=False)
    >>> writes = CheckpointWrites(manager, directory, BackgroundWriter(),
    ...                           blocking=False)
    >>> writes.save(4, {"w": jnp.ones(2)}, hook_states={}, data=None,
    ...             metrics=None, donated=True)
    >>> writes.saved_step, writes.written_step   # step 4 may be in flight
    (4, None)
    >>> writes.wait(); writes.written_step
    4
    >>> writes.close(); manager.all_steps()
    [4]
  """

  def __init__(self, manager: Any, directory: str,
               writer: Optional[BackgroundWriter], *, blocking: bool):
    self.manager = manager
    self._directory = directory
    self._writer = writer
    self._blocking = blocking
    self.saved_step: Optional[int] = None
    self.written_step: Optional[int] = None

  def restored(self, step: int) -> None:
    """Records that ``step`` was restored: it is on disk."""
    self.saved_step = self.written_step = step

  def save(self, step: int, state: Any, *, hook_states: Dict[str, Any],
           data: Any, metrics: Optional[dict], donated: bool) -> None:
    """Starts (or makes) the save of ``state`` as step ``step``.

    ``donated``: the next step call may donate ``state``. Raises the error
    of the previous write, if it failed; this save is then not started.
    """
    write = cio.step_writer(self.manager, step, self._directory,
                            hook_states=hook_states, data=data,
                            metrics=metrics)
    if self._writer is None:
      # An async manager reads the state after save() returns.
      write(state if self._blocking else copy_mutable(state))
      if self._blocking:
        self.written_step = step
    else:
      try:   # waits for the previous write first
        self._writer.submit(write, state, donated=donated)
      except Exception:
        self.saved_step = self.written_step
        raise
      self.written_step = self.saved_step
    self.saved_step = step

  def wait(self) -> None:
    """Blocks until every write is done; raises a failed one's error."""
    try:
      if self._writer is not None:
        self._writer.wait()
      self.manager.wait_until_finished()
    except Exception as e:
      self.saved_step = self.written_step
      raise self._checkpoint_error(e) from e
    self.written_step = self.saved_step

  def failure(self) -> Optional[CheckpointError]:
    """Waits for every write; the error of a failed one, or ``None``."""
    try:
      self.wait()
    except CheckpointError as e:
      return e
    return None

  def close(self, exc: Optional[BaseException] = None) -> None:
    """Closes the writer and the manager, which waits for their writes. A
    failed write raises; or, while ``exc`` ends the loop, becomes a note
    on it."""
    errors = []
    for close in (self._writer and self._writer.close, self.manager.close):
      try:
        if close:
          close()
      except Exception as e:
        errors.append(self._checkpoint_error(e))
    self._writer = None
    if exc is None:
      if errors:
        raise errors[0]
      return
    for error in errors:
      add_note(exc, error)

  def _checkpoint_error(self, e: Exception) -> CheckpointError:
    if isinstance(e, CheckpointError):
      return e
    return CheckpointError(
        f"Writing a checkpoint to `checkpoint_dir` {self._directory!r} "
        f"failed: {type(e).__name__}: {e}")
