"""``CheckpointSaverListener``: code run around ``CheckpointSaverHook``'s
saves, as TensorFlow's listeners."""

from __future__ import annotations

from typing import Optional

from jaxhooks.hook import Session

__all__ = ["CheckpointSaverListener"]


class CheckpointSaverListener:
  """Called around ``CheckpointSaverHook``'s saves (TensorFlow's listener).

  Example:
    >>> class Announce(CheckpointSaverListener):
    ...   def after_save(self, session, global_step_value):
    ...     print("saved", global_step_value)
    ...     return global_step_value >= 10   # True requests stop
    >>> Announce().after_save(None, 10)
    saved 10
    True
  """

  def begin(self) -> None:
    """Called in the hook's ``begin``."""

  def before_save(self, session: Session, global_step_value: int) -> None:
    """Called before a save is started."""

  def after_save(self, session: Session,
                 global_step_value: int) -> Optional[bool]:
    """Called once the save is started (async) or written (sync); return
    ``True`` to stop training after this step. In a multi-process job a
    request made on some processes only is agreed by the coordinator at its
    next check step."""
    return None

  def end(self, session: Session, global_step_value: int) -> None:
    """Called at the end, after the final save is written."""
