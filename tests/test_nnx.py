"""Flax NNX in the tutorial's style: model, optimizer and metrics are objects
that an ``nnx.jit`` step updates in place. They stay the live objects with
every feature of jaxhooks: after each call and after a restore the user's
objects hold the returned state's values."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import jaxhooks as jh
from jaxhooks import nnx_state
from jaxhooks.checkpoint_restore import structure_diff
from _util import Recorder, dict_state, run_with_save_held


class Net(nnx.Module):
  """The MNIST tutorial's CNN, shrunk: batch norm, dropout (an Rngs stream,
  a PRNG key in the state), two linear layers."""

  def __init__(self, *, rngs):
    self.linear1 = nnx.Linear(4, 8, rngs=rngs)
    self.batch_norm = nnx.BatchNorm(8, rngs=rngs)
    self.dropout = nnx.Dropout(rate=0.25, rngs=rngs)
    self.linear2 = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.batch_norm(self.linear1(x)))
    return self.linear2(self.dropout(x))


def loss_fn(model, batch):
  logits = model(batch["x"])
  loss = optax.softmax_cross_entropy_with_integer_labels(
      logits, batch["y"]).mean()
  return loss, logits


@nnx.jit
def train_step(state, batch):
  model, optimizer, metrics = state
  grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
  (loss, logits), grads = grad_fn(model, batch)
  metrics.update(loss=loss, logits=logits, labels=batch["y"])
  optimizer.update(model, grads)
  return state, {"loss": loss}


@nnx.jit
def eval_loss(model, batch):
  return loss_fn(model, batch)[0]   # after model.eval(): no update


def objects():
  model = Net(rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adamw(1e-2, 0.9), wrt=nnx.Param)
  metrics = nnx.MultiMetric(accuracy=nnx.metrics.Accuracy(),
                            loss=nnx.metrics.Average("loss"))
  return model, optimizer, metrics


DATA = {"x": jax.random.normal(jax.random.key(1), (16, 8, 4)),
        "y": jax.random.randint(jax.random.key(2), (16, 8), 0, 3)}


def batch_fn(data, step):
  return jax.tree.map(lambda a: a[step % 16], data)


def step_fn(state):
  return state[1].step[...]


def _bits(tree):
  return [np.asarray(jax.random.key_data(x) if jnp.issubdtype(
      x.dtype, jax.dtypes.prng_key) else x).tobytes()
          for x in jax.tree.leaves(tree)]


def _messages(caplog):
  return [r.getMessage() for r in caplog.records if r.name == "jaxhooks"]


def _line(values):
  return f"step {int(values['step'])} loss {float(values['loss']):.6f}"


def _run(ckpt_dir, last_step, *, donate, seen=None, lines=None):
  """The tutorial's loop with hooks: NaN check, 3 steps per call with
  batch_fn, logging, checkpoints. Checks after every call that the user's
  objects are the live ones; returns them."""
  model, optimizer, metrics = state = objects()
  step = jh.wrap(train_step, hooks=[
      jh.StopAtStepHook(last_step=last_step),
      jh.NanTensorHook("loss"),
      jh.LoggingTensorHook({"step": jh.GLOBAL_STEP, "loss": "loss"},
                           every_n_iter=4, formatter=_line),
      jh.CheckpointSaverHook(ckpt_dir, save_steps=4),
  ], step_fn=step_fn, steps_per_call=3, batch_fn=batch_fn,
                 donate_state=donate)
  restored = step.begin(state)
  assert restored is state
  assert int(optimizer.step[...]) == step.step
  if seen is not None and step.step in seen:   # restored: the run's values
    assert _bits(state) == seen[step.step]
  stop = step.should_stop
  while not stop:
    new, outputs, stop = step(state, DATA)
    assert new is state
    assert new[0] is model and new[1] is optimizer and new[2] is metrics
    assert not any(x.is_deleted() for x in jax.tree.leaves(state))
    assert int(optimizer.step[...]) == step.step
    assert _bits(new) == _bits(state)
    if lines is not None and step.step % 4 == 0:
      lines.append(_line({"step": step.step, "loss": outputs["loss"]}))
    if seen is not None:
      seen[step.step] = _bits(state)
  assert step.end(state) is state
  return state


@pytest.mark.parametrize("donate", [False, True])
def test_nnx_tutorial_loop_with_every_feature_keeps_the_objects_live(
    tmp_path, caplog, donate):
  caplog.set_level(logging.INFO, logger="jaxhooks")
  seen, lines = {}, []
  whole = _run(tmp_path / "a", 12, donate=donate, seen=seen, lines=lines)
  assert int(whole[1].step[...]) == 12
  assert [line.split()[:3] for line in lines] == [
      ["step", "4", "loss"], ["step", "8", "loss"], ["step", "12", "loss"]]
  assert _messages(caplog) == lines
  _run(tmp_path / "b", 8, donate=donate)
  resumed = _run(tmp_path / "b", 12, donate=donate, seen=seen)
  assert int(resumed[1].step[...]) == 12
  assert _bits(resumed) == _bits(whole)
  # The tutorial evaluates its `model` object: it is the trained one.
  whole[0].eval()
  resumed[0].eval()
  assert np.asarray(eval_loss(resumed[0], DATA)).tobytes() == (
      np.asarray(eval_loss(whole[0], DATA)).tobytes())
  saved = ocp.StandardCheckpointer().restore(tmp_path / "b" / "12" / "state")
  assert _bits(saved) == _bits(whole)


class Small(nnx.Module):

  def __init__(self):
    self.w = nnx.Param(jnp.ones(2))
    self.step = nnx.Variable(jnp.array(0))


@nnx.jit
def small_step(model, batch):
  model.w[...] = model.w[...] * 2 + batch
  model.step[...] = model.step[...] + 1
  return model, {"loss": jnp.sum(model.w[...])}


def test_a_save_held_on_its_thread_writes_the_saved_steps_values(
    tmp_path, monkeypatch):
  """The write of step 2 is held before it makes its directory while step
  3 updates the same objects in place: the checkpoint still holds step 2."""
  saver = jh.CheckpointSaverHook(tmp_path / "c", save_steps=2)
  model = Small()
  step = jh.wrap(small_step, hooks=[jh.NanTensorHook("loss"), saver],
                 step_fn=lambda m: m.step[...])
  state, w2 = run_with_save_held(monkeypatch, step, model, jnp.ones(2),
                                 lambda m: np.asarray(m.w[...]).tobytes(),
                                 saver)
  assert state is model
  assert saver.all_steps() == [2, 3]
  saved = ocp.StandardCheckpointer().restore(tmp_path / "c" / "2" / "state")
  assert np.asarray(saved["w"]["value"]).tobytes() == w2


def test_restore_into_the_users_objects_when_the_step_runs_as_it_is(tmp_path):
  """No program of jaxhooks (the step is called as it is): the restored
  checkpoint's values go into the user's objects."""
  def run(last_step):
    model = Small()
    saver = jh.CheckpointSaverHook(tmp_path / "c", save_steps=2)
    step = jh.wrap(small_step, hooks=[jh.StopAtStepHook(last_step=last_step),
                                      saver], step_fn=lambda m: m.step[...])
    state = step.begin(model)
    assert state is model
    restored = np.asarray(model.w[...]).tobytes()
    while not step.should_stop:
      state, _, _ = step(state, jnp.ones(2))
      assert state is model
    step.end(state)
    return model, restored
  first, _ = run(3)
  second, restored = run(3)
  assert int(second.step[...]) == 3
  assert restored == np.asarray(first.w[...]).tobytes()


class Tied(nnx.Module):

  def __init__(self):
    self.embed = nnx.Param(jnp.ones(2))
    self.head = self.embed
    self.step = nnx.Variable(jnp.array(0))


def test_one_variable_in_two_places_is_refused_at_begin_with_a_program():
  log = []
  step = jh.wrap(small_step, hooks=[Recorder("r", log),
                                    jh.NanTensorHook("loss")],
                 step_fn=lambda m: m.step[...])
  with pytest.raises(ValueError, match=(
      r"^`state` holds one Flax NNX Variable in two places \(state\.embed is "
      r"state\.head\), which jaxhooks' program \(device monitors, "
      r"`steps_per_call > 1` or `batch_fn`\) would update as two separate "
      r"arrays\.")):
    step.begin(Tied())
  assert log == []   # before any hook's begin
  # Called as it is, nnx.jit updates the shared Variable as one.
  tied = Tied()
  assert jh.wrap(small_step, step_fn=lambda m: m.step[...]).begin(
      tied) is tied


def test_a_prng_key_in_the_state_matches_its_saved_key_data():
  state = {"rngs": jax.random.key(0), "w": jnp.ones(2)}
  saved = {"rngs": np.zeros(2, np.uint32), "w": np.ones(2, np.float32)}
  assert structure_diff(state, saved) == []
  assert structure_diff(state, {**saved, "rngs": np.zeros(3, np.uint32)}) == [
      "rngs: shape (2,) in the state, (3,) in the checkpoint"]


def test_a_state_without_nnx_objects_keeps_the_plain_program():
  """Decided once at begin: a plain state's calls go straight to the
  jitted program, with nothing in between."""
  assert nnx_state.bind(dict_state(), program=lambda: True) is None
  step = jh.wrap(jax.jit(lambda s, b: ({"w": s["w"], "step": s["step"] + 1},
                                      {"loss": jnp.sum(s["w"])})),
                 hooks=[jh.NanTensorHook("loss")])
  step.begin(dict_state())
  assert isinstance(step._program.jitted, type(jax.jit(lambda x: x)))


class WithData(nnx.Module):

  def __init__(self):
    self.w = nnx.Param(jnp.ones(2))
    self.seen = nnx.data(jnp.zeros(2))   # an array outside any Variable
    self.step = nnx.Variable(jnp.array(0))


@nnx.jit
def data_step(model, batch):
  model.w[...] = model.w[...] + batch
  model.seen = model.seen + 1
  model.step[...] = model.step[...] + 1
  return model, {"loss": jnp.sum(model.w[...])}


def test_an_array_outside_a_variable_stays_live_too():
  model = WithData()
  step = jh.wrap(data_step, hooks=[jh.NanTensorHook("loss")],
                 step_fn=lambda m: m.step[...])
  state = step.begin(model)
  for _ in range(2):
    state, _, _ = step(state, jnp.ones(2))
  assert state is model
  assert (model.seen.tolist(), model.w[...].tolist(), int(model.step[...])) == (
      [2.0, 2.0], [3.0, 3.0], 2)


def test_monitored_training_session_keeps_the_objects_live(tmp_path):
  def run(last_step):
    model = Small()
    with jh.MonitoredTrainingSession(
        small_step, model, checkpoint_dir=str(tmp_path / "c"),
        step_fn=lambda m: m.step[...], log_step_count_steps=0,
        save_summaries_steps=0, hooks=[jh.StopAtStepHook(last_step=last_step),
                                       jh.NanTensorHook("loss")]) as sess:
      assert sess.state is model
      start = int(model.step[...])
      while not sess.should_stop():
        sess.run(jnp.ones(2))
        assert sess.state is model
        assert int(model.step[...]) == sess.global_step
    return model, start
  first, _ = run(2)
  second, start = run(4)
  assert start == 2
  assert (first.w[...].tolist(), second.w[...].tolist()) == (
      [7.0, 7.0], [31.0, 31.0])
