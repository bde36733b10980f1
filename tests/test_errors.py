"""Bad input gets a clear error naming the argument and the value."""

import jax
import jax.numpy as jnp
import pytest

import jaxhooks as jh
from _util import dict_state, dict_step


def test_state_without_step():
  step = jh.wrap(dict_step)
  with pytest.raises(TypeError, match=r"`state` has no step: `state\['step'\]`"
                                      r" raised KeyError: 'step'; the state "
                                      r"is a dict with keys \['w'\]\. "
                                      r"`train_step` must return the state "
                                      r"with its step, or pass `step_fn=`"):
    step.begin({"w": jnp.ones(2)})


def test_failing_step_fn_is_named():
  step = jh.wrap(dict_step, step_fn=lambda s: s["count"])
  with pytest.raises(TypeError, match=r"`step_fn` failed on the state \(dict\)"
                                      r": KeyError: 'count'; the state is a "
                                      r"dict with keys \['step', 'w'\]\.$"):
    step.begin(dict_state())
  with pytest.raises(TypeError, match=r"`step_fn` must be callable, got 3"):
    jh.wrap(dict_step, step_fn=3)


@pytest.mark.parametrize("value,desc", [
    (jnp.array(1.0), "dtype=float32 shape=()"),
    (jnp.array([1, 2]), r"dtype=int32 shape=\(2,\)"),
])
def test_step_must_be_an_integer_scalar(value, desc):
  with pytest.raises(TypeError, match=r"`state.step` must be an integer "
                                      r"scalar, got " + desc):
    jh.wrap(dict_step).begin({"step": value})


@pytest.mark.parametrize("ret,got", [
    (lambda s: s, "dict"),
    (lambda s: (s,), "a tuple of 1"),
    (lambda s: (s, {}, 1), "a tuple of 3"),
])
def test_step_must_return_state_and_outputs(ret, got):
  step = jh.wrap(lambda s, b: ret(s))
  state = step.begin(dict_state())
  with pytest.raises(TypeError, match=r"`train_step` must return "
                                      r"`\(state, outputs\)`, got " + got):
    step(state, None)


def test_host_and_device_step_disagree_at_a_fetch():
  @jax.jit
  def twice(state, batch):
    return {"step": state["step"] + 2}, {"loss": jnp.float32(1)}
  step = jh.wrap(twice, hooks=[jh.LoggingTensorHook(["loss"], every_n_iter=3)])
  state = step.begin(dict_state())
  state, _, _ = step(state)
  state, _, _ = step(state)
  with pytest.raises(jh.StepMismatchError,
                     match=r"The device step is 6 but 3 steps were counted on "
                           r"the host"):
    step(state)


def test_host_and_device_step_disagree_at_end():
  @jax.jit
  def frozen(state, batch):
    return state, {}
  step = jh.wrap(frozen)
  state = step.begin(dict_state(4))
  state, _, _ = step(state)
  with pytest.raises(jh.StepMismatchError, match="device step is 4 but 5"):
    step.end(state)


def test_outputs_must_be_a_dict_to_fetch_by_name():
  step = jh.wrap(jax.jit(lambda s, b: ({"step": s["step"] + 1}, s["step"])),
                 hooks=[jh.NanTensorHook("loss")])
  state = step.begin(dict_state())
  with pytest.raises(TypeError, match=r"fetches the output 'loss', but the "
                                      r"step's `outputs` is an array, not a dict"):
    step(state)
