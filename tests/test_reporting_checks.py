"""Reporting hooks fail early and clearly: output names and hook states are
checked before a step can be lost, non-scalar outputs follow one rule, and a
final op's exception reaches the caller."""

import io
import json
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import jaxhooks as jh
from _util import dict_state, dict_step


def test_final_op_stop_iteration_reaches_the_caller_as_raised():
  done = StopIteration("no more")

  def op(state):
    raise done
  hook = jh.FinalOpsHook({"w": lambda s: s["w"], "bad": op})
  with pytest.raises(StopIteration) as e:
    hook.end(jh.Session({"w": jnp.ones(2)}, 3))
  assert e.value is done


# -- item: names and hook states checked before a step can be lost ----------


WHO = ["LoggingTensorHook `tensors`", "SummarySaverHook `scalars`",
       "EarlyStoppingHook `metric`", "ProgressBarHook `metrics`",
       "CheckpointSaverHook `best_metric`"]


def named_hooks(tmp_path, name):
  """Every reporting hook, naming output ``name``, triggered at step 4."""
  return {
      "LoggingTensorHook `tensors`":
          jh.LoggingTensorHook(["loss", name], every_n_iter=4),
      "SummarySaverHook `scalars`":
          jh.SummarySaverHook(save_steps=4, output_dir=str(tmp_path / "s"),
                              scalars={"l": name}),
      "EarlyStoppingHook `metric`":
          jh.EarlyStoppingHook(name, every_n_iter=4),
      "ProgressBarHook `metrics`":
          jh.ProgressBarHook(metrics=[name], every_n_iter=4,
                             stream=io.StringIO(), plain=True),
      "CheckpointSaverHook `best_metric`":
          jh.CheckpointSaverHook(str(tmp_path / "c"), save_steps=4,
                                 best_metric=name),
  }


@pytest.mark.parametrize("who", WHO)
def test_a_misspelled_output_name_fails_at_the_first_call(tmp_path, who):
  hook = named_hooks(tmp_path, "acc")[who]
  saver = jh.CheckpointSaverHook(str(tmp_path / "ok"), save_steps=2)
  step = jh.wrap(dict_step, [hook, saver])
  state = step.begin(dict_state())
  with pytest.raises(ValueError) as e:
    step(state, jnp.ones(2))   # step 1: no hook's trigger step yet
  assert str(e.value) == (
      f"{who} fetches the output 'acc', which the step does not return; "
      "`outputs` has keys ['loss', 'w0'].")
  assert step.step == 0 and saver.all_steps() == []


def test_outputs_that_are_not_a_dict_fail_at_the_first_call():
  step = jh.wrap(jax.jit(lambda s, b: ({"step": s["step"] + 1}, s["step"])),
                 [jh.LoggingTensorHook(["loss"], every_n_iter=100)])
  state = step.begin({"step": jnp.asarray(0)})
  with pytest.raises(TypeError, match=r"^LoggingTensorHook `tensors` fetches "
                     r"the output 'loss', but the step's `outputs` is an "
                     r"array, not a dict of named outputs\.$"):
    step(state)


class Clocked(jh.SessionRunHook):
  """A hook whose state holds a value JSON cannot hold."""

  def state_dict(self):
    return {"started": object()}


def test_a_hook_state_that_is_not_json_fails_at_begin(tmp_path):
  saver = jh.CheckpointSaverHook(str(tmp_path), save_steps=2)
  step = jh.wrap(dict_step, [Clocked(), saver])
  with pytest.raises(TypeError, match=r"^`Clocked:0.state_dict\(\)`: cannot "
                     r"save a object \(<object object at .*>\) in a "
                     r"checkpoint; use JSON values"):
    step.begin(dict_state())
  assert saver.all_steps() == []


# -- item: one rule for non-scalar outputs (a leading device axis) ----------


@jax.jit
def replicated_step(state, batch):
  """Outputs as `pmap` returns them on 2 devices: a replicated loss (as after
  `lax.pmean`) and a per-device norm whose elements differ."""
  del batch
  loss = 1.0 / (state["step"] + 1.0)
  return {"step": state["step"] + 1}, {
      "loss": jnp.full(2, loss), "norm": jnp.stack([loss, 2 * loss])}


def test_replicated_outputs_report_their_first_element(tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="jaxhooks")
  out = io.StringIO()
  summaries = jh.SummarySaverHook(save_steps=2, writer=jh.JsonlWriter(
      str(tmp_path / "m.jsonl")))
  saver = jh.CheckpointSaverHook(str(tmp_path / "c"), save_steps=2,
                                 best_metric="loss", max_to_keep=1)
  step = jh.wrap(replicated_step, [
      jh.StopAtStepHook(last_step=4),
      jh.LoggingTensorHook(["loss"], every_n_iter=2,
                           formatter=lambda v: f"loss={v['loss']}"),
      jh.ProgressBarHook(metrics=["loss"], every_n_iter=2, stream=out,
                         plain=True, clock=lambda: 0.0),
      jh.EarlyStoppingHook("loss", every_n_iter=2, patience=5),
      summaries, saver])
  state = step.begin({"step": jnp.asarray(0)})
  while not step.should_stop:
    state, _, _ = step(state)
  step.end(state)
  lines = [r.getMessage() for r in caplog.records]
  assert [m for m in lines if m.startswith("loss=")] == ["loss=0.5",
                                                         "loss=0.25"]
  assert step.hooks[3].best == 0.25
  assert out.getvalue().splitlines() == [
      "train: step 2/4 (50%) | loss=0.5",
      "train: step 4/4 (100%) | done in 0:00:00 | loss=0.25"]
  # The default summaries write the replicated loss; the norm, whose
  # elements differ, is named once in a warning.
  rows = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
  assert [(r["step"], r["loss"]) for r in rows] == [(2, 0.5), (4, 0.25)]
  assert all("norm" not in r for r in rows)
  assert [m for m in lines if "does not write" in m] == [
      "SummarySaverHook (scalars=None) does not write the outputs ['norm']: "
      "their elements differ (not a scalar nor a replicated value). Reduce "
      "them in the step, or choose what to write with `scalars=`."]
  assert saver.all_steps() == [4]


@pytest.mark.parametrize("who", WHO)
def test_a_per_device_output_is_refused_at_the_first_call(tmp_path, who):
  hook = named_hooks(tmp_path, "norm")[who]
  step = jh.wrap(replicated_step, [hook])
  state = step.begin({"step": jnp.asarray(0)})
  with pytest.raises(ValueError) as e:
    step(state)
  assert str(e.value) == (
      f"{who} 'norm' is not a scalar: got shape (2,) with elements that "
      "differ. Reporting hooks write a scalar, or the first element of a "
      "replicated value (every element equal, as a `pmap` output reduced "
      "with `lax.pmean`); reduce it in the step (e.g. `jnp.mean`).")
  assert step.step == 0


PMAP = r"""
import io, json, sys
import jax, jax.numpy as jnp
import jaxhooks as jh
from tensorboard.backend.event_processing.event_accumulator import (
    EventAccumulator)

logdir = sys.argv[1]
assert jax.local_device_count() == 2

def train_step(state, batch):
  loss = jax.lax.pmean(jnp.sum(batch) / (state["step"] + 1.0), "d")
  return {"step": state["step"] + 1}, {"loss": loss, "norm": jnp.sum(batch)}

pstep = jax.pmap(train_step, axis_name="d")
batch = jnp.asarray([[1.0, 2.0], [3.0, 4.0]])        # a row per device
first = lambda s: s["step"][0]
out = io.StringIO()
with jh.MonitoredTrainingSession(
    pstep, {"step": jnp.zeros(2, jnp.int32)}, summary_dir=logdir,
    save_summaries_steps=2, log_step_count_steps=0, step_fn=first,
    hooks=[jh.StopAtStepHook(last_step=4),
           jh.ProgressBarHook(metrics=["loss"], every_n_iter=2, stream=out,
                              plain=True, clock=lambda: 0.0)]) as sess:
  while not sess.should_stop():
    sess.run(batch)
acc = EventAccumulator(logdir, size_guidance={"scalars": 0})
acc.Reload()
print(json.dumps({tag: [[e.step, e.value] for e in acc.Scalars(tag)]
                  for tag in acc.Tags()["scalars"]}))
print(json.dumps(out.getvalue().splitlines()))
step = jh.wrap(pstep, [jh.SummarySaverHook(
    save_steps=2, output_dir=logdir + "/named", scalars=["loss", "norm"])],
               step_fn=first)
state = step.begin({"step": jnp.zeros(2, jnp.int32)})
try:
  step(state, batch)
except ValueError as e:
  print(json.dumps([step.step, str(e)]))
"""


@pytest.mark.slow
def test_pmap_outputs_on_two_devices_follow_the_one_rule(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "PYTHONPATH": os.path.dirname(os.path.dirname(jh.__file__))}
  proc = subprocess.run([sys.executable, "-c", PMAP, str(tmp_path)], env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  events, lines, refused = map(json.loads, proc.stdout.splitlines()[-3:])
  # Default summaries: the pmean'd loss (its first element); the per-device
  # norm is not written (a warning names it).
  assert events == {"loss": [[2, 2.5], [4, 1.25]]}
  assert "does not write the outputs ['norm']" in proc.stderr
  assert lines == ["train: step 2/4 (50%) | loss=2.5",
                   "train: step 4/4 (100%) | done in 0:00:00 | loss=1.25"]
  assert refused == [0, (
      "SummarySaverHook `scalars` 'norm' is not a scalar: got shape (2,) "
      "with elements that differ. Reporting hooks write a scalar, or the "
      "first element of a replicated value (every element equal, as a `pmap` "
      "output reduced with `lax.pmean`); reduce it in the step (e.g. "
      "`jnp.mean`).")]
