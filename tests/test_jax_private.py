"""Each private JAX name jaxhooks reads still works on the installed JAX.

A JAX release that moves one fails here by name."""

import logging

import jax
import pytest
from jax._src import distributed as jax_distributed

from jaxhooks import jax_private, program


def _step(state, batch):
  return state, {}


def test_a_jit_function_that_donates_its_state_is_detected():
  assert jax_private.jit_donate_argnums(
      jax.jit(_step, donate_argnums=0)) == (0,)
  assert jax_private.jit_donate_argnums(
      jax.jit(_step, donate_argnames="state")) == (0,)
  assert jax_private.jit_donate_argnums(
      jax.jit(_step, donate_argnums=1)) == (1,)
  assert program.donates_state(jax.jit(_step, donate_argnums=0))
  assert not program.donates_state(jax.jit(_step, donate_argnums=1))


def test_a_jit_function_that_donates_nothing_is_detected():
  assert jax_private.jit_donate_argnums(jax.jit(_step)) == ()
  assert not program.donates_state(jax.jit(_step))


def test_a_plain_function_is_not_known():
  assert jax_private.jit_donate_argnums(_step) is None
  assert not program.donates_state(_step)


def test_a_jit_function_without_jit_info_is_unknown_and_warns_once(
    monkeypatch, caplog):

  class JitWithoutInfo:  # what a jax.jit function would be without the name
    lower = trace = None

    def __call__(self, state, batch):
      return state, {}

  monkeypatch.setattr(jax_private, "_warned", [])
  with caplog.at_level(logging.WARNING, logger="jaxhooks"):
    assert jax_private.jit_donate_argnums(JitWithoutInfo()) is None
    assert jax_private.jit_donate_argnums(JitWithoutInfo()) is None
  assert [r.getMessage() for r in caplog.records] == [
      f"This JAX ({jax.__version__}) has no `_jit_info.donate_argnums` on "
      "jax.jit functions: jaxhooks cannot tell whether the train step "
      "donates its state, assumes it does (saves copy the state) and does "
      "not donate in its own program unless `donate_state=True` is passed."]


def test_the_distributed_client_is_read_from_jax(monkeypatch):
  assert hasattr(jax_distributed.global_state, "client")
  assert jax_distributed.global_state.client is None  # not initialized
  with pytest.raises(RuntimeError) as info:
    jax_private.distributed_client()
  assert str(info.value) == (
      "DistributedCoordinator needs `jax.distributed.initialize()` to have "
      "been called in this process.")
  sentinel = object()
  monkeypatch.setattr(jax_distributed.global_state, "client", sentinel)
  assert jax_private.distributed_client() is sentinel


def test_a_jax_without_the_client_gives_a_clear_error(monkeypatch):
  monkeypatch.delattr(jax_distributed, "global_state")
  with pytest.raises(RuntimeError) as info:
    jax_private.distributed_client()
  assert str(info.value) == (
      f"This JAX ({jax.__version__}) has no "
      "`jax._src.distributed.global_state.client`, the key-value client "
      "jaxhooks reads; pass `client=` to DistributedCoordinator.")
