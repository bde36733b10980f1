"""Flax Linen TrainState + Optax, and Flax NNX through `step_fn`: the hooked
loop trains exactly as the bare loop does."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen, nnx
from flax.training import train_state

import jaxhooks as jh


def _data(n=64):
  x = jax.random.normal(jax.random.key(1), (n, 4))
  y = x @ jnp.array([[1.0], [-2.0], [0.5], [3.0]])
  return x, y


class LinenMLP(linen.Module):
  @linen.compact
  def __call__(self, x):
    return linen.Dense(1)(jax.nn.relu(linen.Dense(16)(x)))


def _linen_state():
  model = LinenMLP()
  params = model.init(jax.random.key(0), jnp.ones((1, 4)))["params"]
  return train_state.TrainState.create(apply_fn=model.apply, params=params,
                                       tx=optax.adam(1e-2))


@jax.jit
def linen_step(state, batch):
  x, y = batch
  def loss_fn(params):
    return jnp.mean((state.apply_fn({"params": params}, x) - y) ** 2)
  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  return state.apply_gradients(grads=grads), {"loss": loss}


def test_linen_train_state_hooked_equals_bare_bit_for_bit():
  batch = _data()
  bare = _linen_state()
  for _ in range(25):
    bare, _ = linen_step(bare, batch)
  final = jh.FinalOpsHook({"loss": lambda s, out: out["loss"]})
  step = jh.wrap(linen_step, hooks=[
      jh.StopAtStepHook(last_step=25), jh.NanTensorHook("loss"),
      jh.LoggingTensorHook(["loss"], every_n_iter=10), final])
  state = step.begin(_linen_state())
  stop = step.should_stop
  while not stop:
    state, outputs, stop = step(state, batch)
  state = step.end(state)
  assert int(state.step) == 25 and step.step == 25
  for a, b in zip(jax.tree.leaves((bare.params, bare.opt_state)),
                  jax.tree.leaves((state.params, state.opt_state))):
    np.testing.assert_array_equal(a, b)
  assert final.final_ops_values["loss"] < 5.0


class NNXMLP(nnx.Module):
  def __init__(self, rngs):
    self.l1 = nnx.Linear(4, 16, rngs=rngs)
    self.l2 = nnx.Linear(16, 1, rngs=rngs)

  def __call__(self, x):
    return self.l2(jax.nn.relu(self.l1(x)))


def _nnx():
  model = NNXMLP(nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  return nnx.split((model, opt))


def _nnx_step(graphdef):
  @jax.jit
  def train_step(state, batch):
    model, opt = nnx.merge(graphdef, state)
    x, y = batch
    loss, grads = nnx.value_and_grad(
        lambda m: jnp.mean((m(x) - y) ** 2))(model)
    opt.update(model, grads)
    return nnx.state((model, opt)), {"loss": loss}
  return train_step


def test_nnx_model_and_optimizer_through_step_fn():
  batch = _data()
  graphdef, bare = _nnx()
  train_step = _nnx_step(graphdef)
  for _ in range(12):
    bare, _ = train_step(bare, batch)
  graphdef, state = _nnx()
  log = []
  step = jh.wrap(train_step, step_fn=lambda s: s[1]["step"][...], hooks=[
      jh.StopAtStepHook(num_steps=12),
      jh.LambdaHook(after_run=lambda ctx, v: log.append(v.results),
                    before_run=lambda ctx: jh.RunArgs(fetches=jh.GLOBAL_STEP)
                    if ctx.step % 4 == 0 else None)])
  state = step.begin(state)
  stop = step.should_stop
  while not stop:
    state, _, stop = step(state, batch)
  state = step.end(state)
  assert [None if v is None else int(v) for v in log] == [
      None, None, None, 4, None, None, None, 8, None, None, None, 12]
  for a, b in zip(jax.tree.leaves(bare), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)


def test_nnx_state_without_step_fn_names_the_fix():
  _, state = _nnx()
  with pytest.raises(TypeError, match=r"`state` has no step: `state\['step'\]`"
                                      r" raised KeyError: 'step'; the state "
                                      r"is a State with keys \['0', '1'\]\. "
                                      r".* pass `step_fn=`"):
    jh.wrap(lambda s, b: (s, {})).begin(state)
