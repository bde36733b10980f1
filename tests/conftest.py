"""Fixtures shared by the tests (helpers live in ``_util.py``)."""

import pytest

from _util import FakeClock


@pytest.fixture
def clock():
  """A :class:`_util.FakeClock` at 0 s."""
  return FakeClock()
