"""Metric writers: where summaries and step rates go.

A writer is anything with ``write_scalars(step, scalars)``, ``flush()`` and
``close()`` (the :class:`MetricWriter` protocol). jaxhooks ships four:

- :class:`TensorBoardWriter`: TensorBoard event files, through
  ``tensorboardX`` (an extra: ``pip install jaxhooks[tensorboard]``),
  imported on the first write.
- :class:`CsvWriter`: one ``step,tag,value`` row per scalar.
- :class:`JsonlWriter`: one JSON object per ``write_scalars`` call.
- :class:`MultiWriter`: fans out to several writers.

The built-in writers write on the primary process (``jax.process_index()
== 0``) only; on other processes every call does nothing, so the same
training script runs unchanged on every host. Files are opened on the first
write (or by ``open()``, which hooks call in ``begin``) and reopened
(appending) after ``close``.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from typing import (Any, Callable, Dict, Iterable, Optional, Protocol,
                    Union, runtime_checkable)

from jaxhooks.scalars import scalar

__all__ = [
    "MetricWriter",
    "TensorBoardWriter",
    "CsvWriter",
    "JsonlWriter",
    "MultiWriter",
    "default_writer",
    "open_writer",
    "scalar_dict",
]

log = logging.getLogger("jaxhooks")


@runtime_checkable
class MetricWriter(Protocol):
  """What hooks write metrics to.

  Example:
    >>> import jaxhooks as jh
    >>> class Printer:
    ...   def write_scalars(self, step, scalars):
    ...     print(step, scalars)
    ...   def flush(self): pass
    ...   def close(self): pass
    >>> isinstance(Printer(), jh.MetricWriter)
    True
  """

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """Writes ``{tag: value}`` at global step ``step``."""

  def flush(self) -> None:
    """Makes what was written visible to readers."""

  def close(self) -> None:
    """Flushes and releases files."""


def scalar_dict(values: Any, *, prefix: str = "",
                who: str = "Summary") -> Dict[str, float]:
  """Flattens ``{tag: value}`` (nested dicts join tags with ``/``) to floats,
  one per value by the rule of :func:`jaxhooks.scalars.scalar` (a
  replicated value gives its first element).

  Raises:
    ValueError: a value with elements that differ (``who`` names the
      writer or hook in the message).

  Example:
    >>> import numpy as np
    >>> scalar_dict({"loss": np.float32(0.5), "acc": {"top1": 1}})
    {'loss': 0.5, 'acc/top1': 1.0}
  """
  if not isinstance(values, Mapping):
    if not prefix:
      raise TypeError(
          f"`scalars` must be a dict of tag -> value, got {values!r}.")
    return {prefix: float(scalar(values, who=who, name=prefix))}
  out: Dict[str, float] = {}
  for tag, value in values.items():
    out.update(scalar_dict(value, prefix=f"{prefix}/{tag}" if prefix
                           else str(tag), who=who))
  return out


def _is_primary() -> bool:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index() == 0


class _FileWriter:
  """Shared logic: primary-only, lazy open, reopen after close."""

  def __init__(self, path: str, *, primary_only: bool = True):
    if not isinstance(path, (str, os.PathLike)):
      raise TypeError(f"`path` must be a path, got {path!r}.")
    self._path = os.fspath(path)
    self._primary_only = primary_only
    self._active: Optional[bool] = None
    self._handle: Any = None

  @property
  def path(self) -> str:
    return self._path

  def _enabled(self) -> bool:
    if self._active is None:
      self._active = not self._primary_only or _is_primary()
    return self._active

  def open(self) -> None:
    """Opens the file now (hooks call it in ``begin``, so that a directory
    that cannot be written fails before training, not at the first write)."""
    if self._handle is None and self._enabled():
      self._handle = self._open()

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self._enabled():
      return
    values = scalar_dict(scalars)
    self.open()
    self._write(self._handle, int(step), values)

  def flush(self) -> None:
    if self._handle is not None:
      self._handle.flush()

  def close(self) -> None:
    if self._handle is not None:
      self._handle.close()
      self._handle = None

  def _open(self) -> Any:
    parent = os.path.dirname(self._path)
    if parent:
      os.makedirs(parent, exist_ok=True)
    return open(self._path, "a", encoding="utf-8", newline="")

  def _write(self, handle: Any, step: int, values: Dict[str, float]) -> None:
    raise NotImplementedError

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self._path!r})"


class TensorBoardWriter(_FileWriter):
  """Writes TensorBoard event files in ``logdir`` with ``tensorboardX``.

  Each ``write_scalars`` call is one event holding all its scalars, written
  in the calling thread (no queue, no background thread). The file is
  flushed by the first write at least ``flush_secs`` after the last flush,
  and by ``flush`` and ``close`` (hooks call them in ``end``).

  Args:
    logdir: the directory of the event files (``tensorboard --logdir``).
    flush_secs: seconds between flushes while writing.
    primary_only: write on process 0 only (the default).
    clock: time source for ``flush_secs`` (tests inject one).

  Example:
    >>> import tempfile, jaxhooks as jh
    >>> writer = jh.TensorBoardWriter(tempfile.mkdtemp())
    >>> writer.write_scalars(100, {"loss": 0.25})
    >>> writer.close()
  """

  _files = itertools.count()

  def __init__(self, logdir: str, *, flush_secs: float = 10.0,
               primary_only: bool = True,
               clock: Optional[Callable[[], float]] = None):
    super().__init__(logdir, primary_only=primary_only)
    self._flush_secs = flush_secs
    self._clock = clock or time.monotonic
    self._last_flush = 0.0

  def _open(self) -> Any:
    try:
      from tensorboardX.event_file_writer import EventsWriter  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(
          "TensorBoardWriter needs tensorboardX: "
          "`pip install jaxhooks[tensorboard]`.") from e
    os.makedirs(self._path, exist_ok=True)
    # Zero-padded, so that files opened within one second sort (and are
    # read by TensorBoard) in the order they were written.
    suffix = f".{os.getpid()}.{next(self._files):06d}"
    self._last_flush = self._clock()
    return EventsWriter(os.path.join(self._path, "events"), suffix)

  def _write(self, handle: Any, step: int, values: Dict[str, float]) -> None:
    from tensorboardX.proto import event_pb2, summary_pb2  # pylint: disable=g-import-not-at-top
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=tag, simple_value=value)
        for tag, value in values.items()])
    handle.write_event(event_pb2.Event(wall_time=time.time(), step=step,
                                       summary=summary))
    now = self._clock()
    if now - self._last_flush >= self._flush_secs:
      handle.flush()
      self._last_flush = now


class CsvWriter(_FileWriter):
  """Appends ``step,tag,value`` rows to a CSV file (header written once).

  Example:
    >>> import os, tempfile, jaxhooks as jh
    >>> path = os.path.join(tempfile.mkdtemp(), "metrics.csv")
    >>> writer = jh.CsvWriter(path)
    >>> writer.write_scalars(10, {"loss": 0.5, "acc": 0.75})
    >>> writer.close()
    >>> print(open(path).read(), end="")
    step,tag,value
    10,loss,0.5
    10,acc,0.75
  """

  def _open(self) -> Any:
    new = not os.path.exists(self._path) or os.path.getsize(self._path) == 0
    handle = super()._open()
    if new:
      csv.writer(handle, lineterminator="\n").writerow(["step", "tag", "value"])
    return handle

  def _write(self, handle: Any, step: int, values: Dict[str, float]) -> None:
    rows = csv.writer(handle, lineterminator="\n")
    for tag, value in values.items():
      rows.writerow([step, tag, repr(value)])


class JsonlWriter(_FileWriter):
  """Appends one JSON object per call: ``{"step": 10, "loss": 0.5}``.

  Non-finite values are written as the strings ``"nan"``, ``"inf"`` and
  ``"-inf"`` so that every line is valid JSON.

  Example:
    >>> import os, tempfile, jaxhooks as jh
    >>> path = os.path.join(tempfile.mkdtemp(), "metrics.jsonl")
    >>> writer = jh.JsonlWriter(path)
    >>> writer.write_scalars(10, {"loss": 0.5})
    >>> writer.close()
    >>> print(open(path).read(), end="")
    {"step": 10, "loss": 0.5}
  """

  def _write(self, handle: Any, step: int, values: Dict[str, float]) -> None:
    record: Dict[str, Any] = {"step": step}
    for tag, value in values.items():
      record[tag] = value if math.isfinite(value) else repr(value)
    handle.write(json.dumps(record) + "\n")


class MultiWriter:
  """Writes to several writers.

  Example:
    >>> import os, tempfile, jaxhooks as jh
    >>> d = tempfile.mkdtemp()
    >>> writer = jh.MultiWriter([jh.JsonlWriter(os.path.join(d, "m.jsonl")),
    ...                          jh.CsvWriter(os.path.join(d, "m.csv"))])
    >>> writer.write_scalars(1, {"loss": 2.0})
    >>> writer.close()
    >>> sorted(os.listdir(d))
    ['m.csv', 'm.jsonl']
  """

  def __init__(self, writers: Iterable[MetricWriter]):
    self._writers = tuple(writers)
    for i, w in enumerate(self._writers):
      if not isinstance(w, MetricWriter):
        raise TypeError(
            f"`writers[{i}]` must have write_scalars, flush and close, "
            f"got {w!r}.")

  @property
  def writers(self) -> tuple:
    return self._writers

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    for w in self._writers:
      w.write_scalars(step, scalars)

  def open(self) -> None:
    for w in self._writers:
      open_writer(w)

  def flush(self) -> None:
    for w in self._writers:
      w.flush()

  def close(self) -> None:
    for w in self._writers:
      w.close()

  def __repr__(self) -> str:
    return f"MultiWriter({list(self._writers)!r})"


def open_writer(writer: MetricWriter, output_dir: Any = None) -> None:
  """Calls ``writer.open()`` when the writer has one (files open early).

  Args:
    writer: the writer to open.
    output_dir: the hook argument the writer was made for; an ``OSError``
      of the open is raised again with a message naming it.

  Raises:
    OSError: the writer's file or directory cannot be written.

  Example:
    >>> import os, tempfile, jaxhooks as jh
    >>> blocker = os.path.join(tempfile.mkdtemp(), "file")
    >>> open(blocker, "w").close()      # a file where a directory must be
    >>> logdir = os.path.join(blocker, "logs")
    >>> try:
    ...   open_writer(jh.JsonlWriter(os.path.join(logdir, "m.jsonl")), logdir)
    ... except OSError as e:
    ...   print(str(e).split(": ")[0].replace(blocker, "<file>"))
    `output_dir` '<file>/logs' is not a writable directory
  """
  opener = getattr(writer, "open", None)
  if not callable(opener):
    return
  if output_dir is None:
    opener()
    return
  try:
    opener()
  except OSError as e:
    raise OSError(
        f"`output_dir` {os.fspath(output_dir)!r} is not a writable "
        f"directory: {type(e).__name__}: {e}") from e


def default_writer(logdir: Union[str, os.PathLike]) -> MetricWriter:
  """A :class:`TensorBoardWriter` in ``logdir``; a :class:`JsonlWriter`
  (``logdir/metrics.jsonl``) when ``tensorboardX`` is not installed.

  Example:
    >>> import tempfile, jaxhooks as jh
    >>> jh.default_writer(tempfile.mkdtemp()).__class__.__name__
    'TensorBoardWriter'
  """
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    log.warning("tensorboardX is not installed; summaries go to %s.",
                os.path.join(logdir, "metrics.jsonl"))
    return JsonlWriter(os.path.join(logdir, "metrics.jsonl"))
  return TensorBoardWriter(os.fspath(logdir))
