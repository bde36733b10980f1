"""One run at a time per checkpoint directory.

Two runs that write the same ``checkpoint_dir`` replace each other's
checkpoints (and Orbax's clean-up deletes the other's writes in progress).
``CheckpointSaverHook.begin`` takes a lock on the directory before it opens
anything in it, and holds it until ``end``/``on_exception``::

  <checkpoint_dir>/.jaxhooks-lock    flock(LOCK_EX | LOCK_NB), held by
                                     process 0 of the run; the file says
                                     who holds it (host, pid, start time)
                                     and is removed when the run ends

The lock belongs to the open file, so the kernel drops it when the process
dies in any way, SIGKILL included: a stale lock never blocks a restart (the
file a killed run leaves is taken over). On
NFS, Linux maps ``flock`` onto the server's byte-range locks, which are
shared between hosts. Object stores (``gs://``, ``s3://``) have no locks:
there the check is skipped, and the README says so. The lock is the file:
deleting it by hand while a run holds it lets another run in.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import socket
from typing import Optional

from jaxhooks.errors import CheckpointError

__all__ = ["DirectoryLock", "LOCK_FILE"]

LOCK_FILE = ".jaxhooks-lock"

try:
  import fcntl
except ImportError:  # Windows: no flock
  fcntl = None  # type: ignore[assignment]


class DirectoryLock:
  """An exclusive lock on a local (or network file system) directory.

  Args:
    directory: an existing directory. A URL (``gs://...``) is not locked.

  Example:
    >>> import tempfile
    >>> directory = tempfile.mkdtemp()
    >>> first, second = DirectoryLock(directory), DirectoryLock(directory)
    >>> first.acquire()
    >>> try:
    ...   second.acquire()
    ... except CheckpointError as e:
    ...   print(str(e).split(" (")[0].replace(directory, "DIR"))
    `checkpoint_dir` 'DIR' is in use by another run
    >>> first.release(); second.acquire(); second.release()
  """

  def __init__(self, directory: str):
    self.directory = directory
    self._fd: Optional[int] = None

  @property
  def held(self) -> bool:
    return self._fd is not None

  def acquire(self) -> None:
    """Takes the lock.

    Raises:
      CheckpointError: another run holds it (its host, pid and start time
        are named).
    """
    if self._fd is not None or fcntl is None or "://" in self.directory:
      return
    path = os.path.join(self.directory, LOCK_FILE)
    for _ in range(8):
      fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        holder = _read_holder(fd)
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
          raise CheckpointError(
              f"`checkpoint_dir` {self.directory!r} could not be locked: "
              f"{type(e).__name__}: {e}") from e
        raise CheckpointError(
            f"`checkpoint_dir` {self.directory!r} is in use by another run "
            f"({holder}). Two runs writing one directory would replace each "
            "other's checkpoints: wait for that run to end, stop it, or give "
            "this run another directory.") from None
      if _same_file(fd, path):
        break
      os.close(fd)   # the holder removed the file as we locked it: again
    else:
      raise CheckpointError(f"`checkpoint_dir` {self.directory!r} could not "
                            "be locked: the lock file keeps changing.")
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({
        "host": socket.gethostname(), "pid": os.getpid(),
        "since": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds")}).encode())
    self._fd = fd

  def release(self) -> None:
    """Removes the lock file and drops the lock. (A run that opened the
    file just before sees, once it holds it, that it is no longer the
    file at that path, and tries again.)"""
    fd, self._fd = self._fd, None
    if fd is not None:
      path = os.path.join(self.directory, LOCK_FILE)
      if _same_file(fd, path):   # not a file another run made since
        try:
          os.unlink(path)
        except OSError:   # gone with its directory: nothing to clean
          pass
      os.close(fd)        # closing the file drops the lock


def _same_file(fd: int, path: str) -> bool:
  try:
    return os.fstat(fd).st_ino == os.stat(path).st_ino
  except OSError:
    return False


def _read_holder(fd: int) -> str:
  try:
    raw = os.pread(fd, 4096, 0)
    info = json.loads(raw.decode() or "{}")
    return (f"pid {info.get('pid')} on host {info.get('host')!r}, since "
            f"{info.get('since')}")
  except (OSError, ValueError):
    return "holder unknown"
