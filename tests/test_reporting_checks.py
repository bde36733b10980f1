"""Reporting hooks fail early and clearly: output names and hook states are
checked before a step can be lost, non-scalar outputs follow one rule, and a
final op's exception reaches the caller."""

import jax.numpy as jnp
import pytest

import jaxhooks as jh


def test_final_op_stop_iteration_reaches_the_caller_as_raised():
  done = StopIteration("no more")

  def op(state):
    raise done
  hook = jh.FinalOpsHook({"w": lambda s: s["w"], "bad": op})
  with pytest.raises(StopIteration) as e:
    hook.end(jh.Session({"w": jnp.ones(2)}, 3))
  assert e.value is done
