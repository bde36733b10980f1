"""Fixtures for every test and doctest of the repository."""

import pytest


@pytest.fixture(autouse=True)
def _abort_sessions_left_open():
  """A test that leaves a session open (no `end`) aborts it when it ends,
  as the interpreter's exit would: handlers back, writes finished, the
  directory unlocked."""
  yield
  from jaxhooks import errors, process_exit
  for session in process_exit.open_sessions():
    session.abort(errors.LifecycleError("the test ended without `end()`"))
