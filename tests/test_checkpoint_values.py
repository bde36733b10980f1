"""The values a checkpoint holds and gives back: best-metric retention with
NaN, hook states that restore a stopped run, dtypes, structures with empty
nodes, PRNG keys, foreign checkpoints, non-finite states at the end, and
clear errors for bad directories and states."""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import jaxhooks as jh
from _util import dict_state, dict_step


def train(hooks, state=None, *, train_step=dict_step, batch=None):
  """begin, run to stop, end; returns (final state, hooked step)."""
  step = jh.wrap(train_step, hooks=hooks)
  state = step.begin(dict_state() if state is None else state)
  batch = jnp.ones(2) if batch is None else batch
  while not step.should_stop:
    state, _, _ = step(state, batch)
  return step.end(state), step


def on_disk(path):
  return sorted(int(d) for d in os.listdir(path) if d.isdigit())


# -- 16: bad directories, states without a step, the agreed preemption log --


def test_an_empty_checkpoint_dir_is_a_value_error():
  for bad in ("", "  "):
    with pytest.raises(ValueError, match=r"^`checkpoint_dir` must name a "
                       f"directory, got '{bad}'\\.$"):
      jh.CheckpointSaverHook(bad)


@pytest.mark.parametrize("hooks", [
    [],                                                 # read at end()
    [jh.LoggingTensorHook(["loss"], every_n_iter=1)],   # a fetch
    [jh.NanTensorHook("loss", every_n_iter=1)],         # the step's program
])
def test_a_step_that_drops_the_step_names_what_it_read(hooks):
  dropped = jax.jit(lambda s, b: ({"w": s["w"] * 2}, {"loss": 1.0}))
  step = jh.wrap(dropped, hooks=[jh.StopAtStepHook(last_step=2), *hooks])
  state = step.begin(dict_state())
  with pytest.raises(TypeError) as info:
    while not step.should_stop:
      state, _, _ = step(state)
    step.end(state)
  assert str(info.value) == (
      "`state` has no step: `state['step']` raised KeyError: 'step'; the "
      "state is a dict with keys ['w']. `train_step` must return the state "
      "with its step, or pass `step_fn=` (a function returning the "
      "completed-update count of the state), e.g. `step_fn=lambda s: "
      "s['opt'].step` for a dict or Flax NNX state.")


def test_an_agreed_preemption_says_where_the_notice_came_from(tmp_path,
                                                              caplog):
  caplog.set_level(logging.WARNING, logger="jaxhooks")

  class Agreed(jh.Coordinator):
    check_every_n_steps = 5

    def agree_preemption_step(self, step, *, notified):
      return 5  # the notice came to another process

  step = jh.wrap(dict_step, hooks=[jh.CheckpointSaverHook(tmp_path)],
                 coord=Agreed())
  state = step.begin(dict_state())
  while not step.should_stop:
    state, _, _ = step(state, jnp.ones(2))
  step.end(state)
  assert step.step == 5 and on_disk(tmp_path) == [5]
  assert [r.getMessage() for r in caplog.records] == [
      "Preemption agreed with the other processes (the notice came to "
      "another one): saved step 5, stopping."]


# -- 4: a NaN metric never counts as better ---------------------------------


def scripted(losses):
  """A step whose loss at step s is losses[s - 1]."""
  table = jnp.asarray(losses, jnp.float32)
  return jax.jit(lambda s, b: ({**s, "step": s["step"] + 1},
                               {"loss": table[s["step"]]}))


@pytest.mark.parametrize("mode, sign", [("min", 1.0), ("max", -1.0)])
def test_best_metric_ranks_a_nan_metric_last(tmp_path, mode, sign):
  # Saved at steps 2, 4, ..., 12 with losses 5, 3, NaN, 4, 2, 6: the best two
  # are steps 10 (2) and 4 (3); 12 is the latest.
  losses = [0.0] * 12
  for s, loss in zip(range(2, 13, 2), [5, 3, np.nan, 4, 2, 6]):
    losses[s - 1] = sign * loss
  train([jh.StopAtStepHook(last_step=12),
         jh.CheckpointSaverHook(tmp_path, save_steps=2, max_to_keep=2,
                                best_metric="loss", best_mode=mode)],
        train_step=scripted(losses))
  assert on_disk(tmp_path) == [4, 10, 12]


# -- 10 and the JSON of hook states -----------------------------------------


def _strict_json(path, step):
  """The hooks item of a checkpoint, read as strict JSON (no NaN)."""
  def refuse(constant):
    raise ValueError(f"not JSON: {constant}")
  with open(os.path.join(path, str(step), "hooks", "metadata")) as f:
    return json.loads(f.read(), parse_constant=refuse)


def _early_stopping_run(tmp_path, last_step=100):
  # Checked every 5 steps: 15, 10, 5, 0, then 0 for ever; with patience 4
  # the checks of steps 25, 30, 35 and 40 do not improve: stop at 40.
  es = jh.EarlyStoppingHook("loss", patience=4, every_n_iter=5)
  saver = jh.CheckpointSaverHook(tmp_path, save_steps=20)
  losses = [max(0.0, 20.0 - s) for s in range(1, last_step + 1)]
  _, step = train([jh.StopAtStepHook(last_step=last_step), es, saver],
                  train_step=scripted(losses))
  return step.step, es, saver


def test_a_restart_from_an_early_stop_trains_zero_steps(tmp_path):
  assert _early_stopping_run(tmp_path)[0] == 40
  assert on_disk(tmp_path) == [20, 40]
  for _ in range(2):    # every restart: restored at 40, stopped at 40
    stopped_at, es, saver = _early_stopping_run(tmp_path)
    assert (stopped_at, saver.restored_step) == (40, 40)
    assert (es.stopped_step, es.wait, es.best, es.best_step) == (
        40, 4, 0.0, 20)
    assert on_disk(tmp_path) == [20, 40]


def test_a_restart_with_more_patience_trains_on(tmp_path):
  _early_stopping_run(tmp_path)
  es = jh.EarlyStoppingHook("loss", patience=6, every_n_iter=5)
  _, step = train([jh.StopAtStepHook(last_step=100), es,
                   jh.CheckpointSaverHook(tmp_path, save_steps=20)],
                  train_step=scripted([0.0] * 100))
  assert (step.step, es.stopped_step, es.wait) == (50, 50, 6)


def test_early_stopping_state_is_valid_json_and_reads_back(tmp_path):
  # Saved at step 2, before the first check (step 5): no best value yet.
  es = jh.EarlyStoppingHook("loss", patience=4, every_n_iter=5)
  train([jh.StopAtStepHook(last_step=2), es, jh.CheckpointSaverHook(tmp_path)],
        train_step=scripted([1.0] * 10))
  assert _strict_json(tmp_path, 2)["EarlyStoppingHook:0"] == {
      "best": None, "best_step": -1, "wait": 0, "stopped_step": -1,
      "last_step": -1}
  again = jh.EarlyStoppingHook("loss", patience=4, every_n_iter=5)
  train([jh.StopAtStepHook(last_step=2), again,
         jh.CheckpointSaverHook(tmp_path)])
  assert (again.best, again.best_step, again.stopped_step) == (None, None,
                                                               None)


def test_non_finite_floats_in_hook_states_are_valid_json(tmp_path):
  # A loss of -inf is the best value in 'min' mode: it is saved as JSON and
  # comes back as -inf.
  es = jh.EarlyStoppingHook("loss", patience=4)
  train([jh.StopAtStepHook(last_step=3), es, jh.CheckpointSaverHook(tmp_path)],
        train_step=scripted([1.0, -np.inf, 2.0]))
  assert es.best == -np.inf
  assert _strict_json(tmp_path, 3)["EarlyStoppingHook:0"]["best"] == {
      "__float__": "-inf"}
  again = jh.EarlyStoppingHook("loss", patience=4)
  train([jh.StopAtStepHook(last_step=3), again,
         jh.CheckpointSaverHook(tmp_path)])
  assert (again.best, again.best_step, again.wait) == (-np.inf, 2, 1)


# -- 11, 12: dtypes and structures are checked before any array is read ----


def _saved_once(tmp_path, state):
  """A checkpoint of ``state`` at step 1."""
  step_1 = jax.jit(lambda s, b: ({**s, "step": s["step"] + 1}, {}))
  train([jh.StopAtStepHook(last_step=1), jh.CheckpointSaverHook(tmp_path)],
        state, train_step=step_1)
  return step_1


def _mismatch(tmp_path, train_step, state):
  """The message of the CheckpointMismatchError of restoring into state."""
  step = jh.wrap(train_step, hooks=[jh.CheckpointSaverHook(tmp_path)])
  with pytest.raises(jh.CheckpointMismatchError) as info:
    step.begin(state)
  return str(info.value)


def test_a_dtype_mismatch_is_refused_unless_a_cast_is_asked(tmp_path):
  step_1 = _saved_once(tmp_path, {"w": jnp.asarray([1.7, -2.5]),
                                  "step": jnp.array(0)})
  ints = {"w": jnp.zeros(2, jnp.int32), "step": jnp.array(0)}
  assert _mismatch(tmp_path, step_1, ints) == (
      f"The checkpoint of step 1 in '{tmp_path / '1'}' does not match the "
      "structure of `state`: w: dtype int32 in the state, float32 in the "
      "checkpoint; pass `restore_dtypes='cast'` to cast the saved values.")
  cast = jh.wrap(step_1, hooks=[jh.CheckpointSaverHook(
      tmp_path, restore_dtypes="cast")])
  restored = cast.begin(ints)
  assert restored["w"].dtype == jnp.int32 and restored["w"].tolist() == [1, -2]
  cast.end(restored)
  with pytest.raises(ValueError, match=r"^`restore_dtypes` must be 'exact' "
                     r"or 'cast', got 'float'\.$"):
    jh.CheckpointSaverHook(tmp_path, restore_dtypes="float")


@pytest.mark.parametrize("saved, given, diff", [
    ({"e": {}}, {}, "only in the checkpoint: e"),
    ({}, {"e": {}}, "missing in the checkpoint: e"),
    ({"n": None}, {}, "only in the checkpoint: n"),
    ({}, {"n": None}, "missing in the checkpoint: n"),
    ({"n": None}, {"n": jnp.ones(1)},
     "n: an array in the state, None in the checkpoint"),
])
def test_an_empty_node_difference_is_a_mismatch_not_corruption(
    tmp_path, saved, given, diff):
  base = {"w": jnp.ones(2), "step": jnp.array(0)}
  step_1 = _saved_once(tmp_path, {**base, **saved})
  assert _mismatch(tmp_path, step_1, {**base, **given}) == (
      f"The checkpoint of step 1 in '{tmp_path / '1'}' does not match the "
      f"structure of `state`: {diff}.")


def test_none_and_an_empty_dict_restore_into_each_other(tmp_path):
  base = {"w": jnp.ones(2), "step": jnp.array(0)}
  step_1 = _saved_once(tmp_path, {**base, "n": None})
  restored, step = train([jh.CheckpointSaverHook(tmp_path),
                          jh.StopAtStepHook(last_step=1)],
                         {**base, "n": {}}, train_step=step_1)
  assert step.step == 1 and restored["n"] == {}


@pytest.mark.parametrize("probe_reads", [False, True])
def test_a_failed_restore_is_corruption_only_if_the_files_do_not_read(
    tmp_path, monkeypatch, probe_reads):
  # The metadata reads and matches; the restore into the state fails. The
  # checkpoint is called corrupted only if a restore of the saved tree as
  # it is (no target) fails too.
  _saved_once(tmp_path, {"w": jnp.ones(2), "step": jnp.array(0)})
  real = ocp.CheckpointManager.restore
  calls = []

  def restore(self, step, args=None):
    target = args["state"].item
    calls.append(target is None)
    if target is None and probe_reads:
      return real(self, step, args=args)
    raise OSError("injected read error")
  monkeypatch.setattr(ocp.CheckpointManager, "restore", restore)
  step = jh.wrap(dict_step, hooks=[jh.CheckpointSaverHook(tmp_path)])
  with pytest.raises(jh.CheckpointError) as info:
    step.begin(dict_state(w=(1.0, 1.0)))
  assert calls == [False, True]
  where = f"The checkpoint of step 1 in '{tmp_path / '1'}'"
  if probe_reads:
    assert isinstance(info.value, jh.CheckpointMismatchError)
    assert str(info.value) == (
        f"{where} is readable but could not be restored into `state` "
        "(OSError: injected read error).")
  else:
    assert not isinstance(info.value, jh.CheckpointMismatchError)
    assert str(info.value) == (
        f"{where} is corrupted: its files cannot be read (OSError: injected "
        "read error). Delete that directory to resume from the previous "
        "checkpoint (steps on disk: [1]).")


# -- 21: typed PRNG keys resume bit-identically ------------------------------


@jax.jit
def key_step(state, batch):
  key, sub = jax.random.split(state["key"])
  w = state["w"] + jax.random.normal(sub, (2,)) * batch
  return {"key": key, "w": w, "step": state["step"] + 1}, {}


def _resumed(tmp_path, train_step, new_state, *, stop_first, last_step):
  """(state after a run to stop_first and a resume to last_step, state of
  an uninterrupted run to last_step); each run starts from new_state()
  (NNX objects in a state are updated in place)."""
  train([jh.StopAtStepHook(last_step=stop_first),
         jh.CheckpointSaverHook(tmp_path, save_steps=2)], new_state(),
        train_step=train_step)
  saver = jh.CheckpointSaverHook(tmp_path, save_steps=2)
  resumed, step = train([jh.StopAtStepHook(last_step=last_step), saver],
                        new_state(), train_step=train_step)
  assert saver.restored_step == stop_first and step.step == last_step
  whole, _ = train([jh.StopAtStepHook(last_step=last_step)], new_state(),
                   train_step=train_step)
  return resumed, whole


def test_a_state_with_a_typed_prng_key_resumes_bit_identically(tmp_path):
  def new_state():
    return {"key": jax.random.key(7), "w": jnp.zeros(2),
            "step": jnp.array(0)}
  resumed, whole = _resumed(tmp_path, key_step, new_state, stop_first=3,
                            last_step=6)
  assert resumed["key"].dtype == new_state()["key"].dtype
  assert (np.asarray(jax.random.key_data(resumed["key"])).tobytes()
          == np.asarray(jax.random.key_data(whole["key"])).tobytes())
  assert np.asarray(resumed["w"]).tobytes() == np.asarray(whole["w"]).tobytes()


def test_an_nnx_model_with_rngs_resumes_bit_identically(tmp_path):
  nnx = pytest.importorskip("flax.nnx")

  class Model(nnx.Module):

    def __init__(self, rngs):
      self.lin = nnx.Linear(2, 1, rngs=rngs)
      self.rngs = rngs

  graphdef, _ = nnx.split(Model(nnx.Rngs(0, noise=1)))

  @jax.jit
  def nnx_step(state, batch):
    model = nnx.merge(graphdef, state["model"])
    noise = jax.random.normal(model.rngs.noise(), (2, 1))
    model.lin.kernel[...] = model.lin.kernel[...] + noise * batch[:, None]
    return {"model": nnx.state(model), "step": state["step"] + 1}, {}

  def new_state():
    return {"model": nnx.state(Model(nnx.Rngs(0, noise=1))),
            "step": jnp.array(0)}
  resumed, whole = _resumed(tmp_path, nnx_step, new_state, stop_first=3,
                            last_step=6)
  a, b = nnx.merge(graphdef, resumed["model"]), nnx.merge(graphdef,
                                                          whole["model"])
  assert int(a.rngs.noise.count[...]) == 6
  for got, want in [(a.rngs.noise.key[...], b.rngs.noise.key[...]),
                    (a.rngs.default.key[...], b.rngs.default.key[...])]:
    assert (np.asarray(jax.random.key_data(got)).tobytes()
            == np.asarray(jax.random.key_data(want)).tobytes())
  assert (np.asarray(a.lin.kernel[...]).tobytes()
          == np.asarray(b.lin.kernel[...]).tobytes())
  assert int(a.rngs.noise.count[...]) == int(b.rngs.noise.count[...])


# -- 15: a session stopped because of a non-finite value ends cleanly ------


def _nan_at_3(state, batch):
  return dict_step(state, jnp.where(state["step"] == 2, jnp.nan, batch))


@pytest.mark.parametrize("save_steps, kept", [(2, [2]), (3, [])])
def test_log_and_stop_on_nan_ends_cleanly_without_a_non_finite_save(
    tmp_path, caplog, save_steps, kept):
  # save_steps=3: the periodic save falls on the step the NaN is seen at.
  caplog.set_level(logging.WARNING, logger="jaxhooks")
  saver = jh.CheckpointSaverHook(tmp_path, save_steps=save_steps)
  final, step = train([jh.StopAtStepHook(last_step=9),
                       jh.NanTensorHook("loss", fail_on_nan_loss=False,
                                        every_n_iter=1), saver],
                      train_step=jax.jit(_nan_at_3))
  assert step.step == 3 and np.isnan(np.asarray(final["w"])).all()
  assert on_disk(tmp_path) == kept
  last = kept[-1] if kept else None
  assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
      ("WARNING", "Model diverged with loss = nan at step 3; stopping."),
  ] + [("ERROR", "Not saving the non-finite train state of step 3; the last "
        f"checkpoint (step {last}) is kept.")] * (1 + (save_steps == 3))


def test_the_final_save_of_a_non_finite_state_is_skipped_not_raised(
    tmp_path, caplog):
  # No hook looks at the loss: the loop reaches last_step with a NaN state.
  caplog.set_level(logging.ERROR, logger="jaxhooks")
  listener_calls = []

  class Ends(jh.CheckpointSaverListener):

    def end(self, session, global_step_value):
      listener_calls.append(global_step_value)

  final, step = train([jh.StopAtStepHook(last_step=4),
                       jh.CheckpointSaverHook(tmp_path, save_steps=2,
                                              listeners=[Ends()])],
                      train_step=jax.jit(_nan_at_3))
  assert step.step == 4 and on_disk(tmp_path) == [2]
  assert listener_calls == [4]
  assert [r.getMessage() for r in caplog.records] == [
      "Not saving the non-finite train state of step 4; the last checkpoint "
      "(step 2) is kept."] * 2   # the save of step 4, and the final one


# -- 24: a directory of another tool's checkpoints is not trained beside ----


def _flax_style_run(path):
  """A directory as a Flax run leaves it: checkpoint_<step> entries (and a
  TensorBoard file, which is not a checkpoint)."""
  os.makedirs(path / "checkpoint_220")
  (path / "checkpoint_220" / "_CHECKPOINT_METADATA").write_text("{}")
  (path / "checkpoint_110").write_bytes(b"msgpack")
  (path / "events.out.tfevents.1700000000.host").write_bytes(b"")


def test_foreign_checkpoints_are_refused_at_begin(tmp_path):
  _flax_style_run(tmp_path)
  calls = []
  step = jh.wrap(lambda s, b: calls.append(1),
                 hooks=[jh.CheckpointSaverHook(tmp_path, save_steps=1)])
  with pytest.raises(jh.CheckpointError) as info:
    step.begin(dict_state())
  assert str(info.value) == (
      f"`checkpoint_dir` '{tmp_path}' holds checkpoints that jaxhooks does "
      "not read (checkpoint_110, checkpoint_220) and none of its own: "
      "training would start from the given state and save beside them. To "
      "import one, restore it into the state yourself (for example with "
      "`orbax.checkpoint.StandardCheckpointer().restore(path, target)` or "
      "Flax's `checkpoints.restore_checkpoint(path, target)`) and hand that "
      "state to `begin` with `CheckpointSaverHook(..., "
      "foreign_checkpoints='warn')`; or use another `checkpoint_dir`.")
  assert calls == [] and on_disk(tmp_path) == []


def test_an_imported_state_trains_on_with_a_warning_then_resumes(tmp_path,
                                                                 caplog):
  caplog.set_level(logging.WARNING, logger="jaxhooks")
  _flax_style_run(tmp_path)
  imported = dict_state(step=220, w=(0.5, 0.25))   # restored by the user
  saver = jh.CheckpointSaverHook(tmp_path, foreign_checkpoints="warn")
  train([jh.StopAtStepHook(last_step=222), saver], imported)
  assert on_disk(tmp_path) == [222]
  assert [r.getMessage() for r in caplog.records] == [
      f"`checkpoint_dir` '{tmp_path}' holds checkpoints that jaxhooks does "
      "not read (checkpoint_110, checkpoint_220) and none of its own; "
      "training starts from the given state and saves beside them."]
  caplog.clear()   # a restart resumes from jaxhooks' own checkpoint
  saver = jh.CheckpointSaverHook(tmp_path)
  _, step = train([jh.StopAtStepHook(last_step=224), saver])
  assert (saver.restored_step, step.step) == (222, 224)
  assert caplog.records == []
  with pytest.raises(ValueError, match=r"^`foreign_checkpoints` must be "
                     r"'raise' or 'warn', got 'ignore'\.$"):
    jh.CheckpointSaverHook(tmp_path, foreign_checkpoints="ignore")


def test_own_partial_writes_and_other_files_are_not_foreign(tmp_path):
  os.makedirs(tmp_path / "2.orbax-checkpoint-tmp-17" / "state")
  (tmp_path / "events.out.tfevents.1700000000.host").write_bytes(b"")
  (tmp_path / "config.json").write_text("{}")
  _, step = train([jh.StopAtStepHook(last_step=1),
                   jh.CheckpointSaverHook(tmp_path)])
  assert step.step == 1 and on_disk(tmp_path) == [1]
