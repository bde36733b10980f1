"""SummarySaverHook, the metric writers and the summary defaults of
MonitoredTrainingSession, read back with TensorBoard's own event reader."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import (
    EventAccumulator)

import jaxhooks as jh
from jaxhooks import session as session_lib
from jaxhooks import writers as writers_lib
from _util import FakeClock
from observability_util import (FetchSpy, expected, run, scripted_step,
                                state_at)

LOSSES = [0.5 + 1.0 / k for k in range(1, 31)]


def read_events(logdir):
  acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
          for tag in acc.Tags()["scalars"]}


def test_event_files_hold_exactly_the_trigger_steps(tmp_path, monkeypatch):
  spy = FetchSpy(monkeypatch)
  calls = []

  def lr(state, outputs):
    calls.append(1)
    return jnp.float32(0.25)

  hook = jh.SummarySaverHook(save_steps=3, output_dir=str(tmp_path),
                             scalars=["loss", lr])
  run(scripted_step(LOSSES), [jh.StopAtStepHook(last_step=10), hook])
  assert read_events(tmp_path) == {
      "loss": list(zip([3, 6, 9], expected(LOSSES, [3, 6, 9]))),
      "lr": [(3, 0.25), (6, 0.25), (9, 0.25)],
  }
  assert len(calls) == 3 and spy.calls == 3  # trigger steps only


def test_default_scalars_are_the_scalar_outputs(tmp_path):
  run(scripted_step(LOSSES), [
      jh.StopAtStepHook(last_step=4),
      jh.SummarySaverHook(save_steps=2, output_dir=str(tmp_path))])
  events = read_events(tmp_path)
  assert sorted(events) == ["double", "loss"]  # "vec"'s elements differ
  assert events["double"] == list(zip([2, 4], [2 * v for v in expected(
      LOSSES, [2, 4])]))


def test_dict_tags_and_nested_results(tmp_path):
  hook = jh.SummarySaverHook(
      save_steps=5, output_dir=str(tmp_path),
      scalars={"train/loss": "loss",
               "stats": lambda s, o: {"a": o["loss"], "b": 1}})
  run(scripted_step(LOSSES), [jh.StopAtStepHook(last_step=5), hook])
  (loss5,) = expected(LOSSES, [5])
  assert read_events(tmp_path) == {"train/loss": [(5, loss5)],
                                   "stats/a": [(5, loss5)],
                                   "stats/b": [(5, 1.0)]}


def test_save_secs_uses_the_injected_clock(tmp_path):
  clock = FakeClock()
  tick = jh.LambdaHook(before_run=lambda ctx: clock.advance(4.0))
  hook = jh.SummarySaverHook(save_secs=10, output_dir=str(tmp_path),
                             scalars=["loss"], clock=clock)
  run(scripted_step(LOSSES), [jh.StopAtStepHook(last_step=12), tick, hook])
  # First step, then every step at least 10 s (3 steps of 4 s) later.
  assert [s for s, _ in read_events(tmp_path)["loss"]] == [1, 4, 7, 10]


def test_shared_writer_is_flushed_not_closed(tmp_path):
  writer = jh.JsonlWriter(str(tmp_path / "m.jsonl"))
  run(scripted_step(LOSSES), [
      jh.StopAtStepHook(last_step=4),
      jh.SummarySaverHook(save_steps=4, writer=writer, scalars=["loss"])])
  writer.write_scalars(5, {"extra": 1.0})
  writer.close()
  lines = (tmp_path / "m.jsonl").read_text().splitlines()
  assert [json.loads(x) for x in lines] == [
      {"step": 4, "loss": expected(LOSSES, [4])[0]}, {"step": 5, "extra": 1.0}]


def test_state_dict_round_trip():
  hook = jh.SummarySaverHook(save_steps=100, output_dir="unused")
  hook.timer.update_last_triggered_step(300)
  other = jh.SummarySaverHook(save_steps=100, output_dir="unused")
  other.load_state_dict(hook.state_dict())
  assert other.timer.last_triggered_step() == 300
  assert not other.timer.should_trigger_for_step(300)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(save_steps=1), ValueError, "Exactly one of `output_dir` and `writer`"),
    (dict(save_steps=1, output_dir="d", writer=jh.CsvWriter("x.csv")),
     ValueError, "Exactly one of `output_dir` and `writer`"),
    (dict(output_dir="d"), ValueError, "`save_secs` and `save_steps`"),
    (dict(save_steps=1, save_secs=2, output_dir="d"), ValueError,
     "save_secs=2, save_steps=1"),
    (dict(save_steps=0, output_dir="d"), ValueError, "`save_steps` must be"),
    (dict(save_steps=1, writer=object()), TypeError, "`writer` must have"),
    (dict(save_steps=1, output_dir="d", scalars=[3]), TypeError,
     r"`tensors\[\'3\'\]`"),
])
def test_bad_arguments(kwargs, error, match):
  with pytest.raises(error, match=match):
    jh.SummarySaverHook(**kwargs)


def test_non_scalar_summary_is_a_clear_error(tmp_path):
  hook = jh.SummarySaverHook(save_steps=1, output_dir=str(tmp_path),
                             scalars=["vec"])
  with pytest.raises(ValueError, match=r"SummarySaverHook `scalars` 'vec' is "
                     r"not a scalar: got shape \(3,\) with elements that "
                     r"differ"):
    run(scripted_step(LOSSES), [jh.StopAtStepHook(last_step=2), hook])


def test_csv_jsonl_and_multi_writer(tmp_path):
  csv_path, jsonl_path = tmp_path / "a" / "m.csv", tmp_path / "m.jsonl"
  writer = jh.MultiWriter([jh.CsvWriter(str(csv_path)),
                           jh.JsonlWriter(str(jsonl_path))])
  writer.write_scalars(1, {"loss": np.float32(0.5), "acc": jnp.array(1)})
  writer.close()  # reopened on the next write, appending
  writer.write_scalars(2, {"loss": float("nan")})
  writer.flush()
  writer.close()
  assert csv_path.read_text() == (
      "step,tag,value\n1,loss,0.5\n1,acc,1.0\n2,loss,nan\n")
  assert jsonl_path.read_text() == (
      '{"step": 1, "loss": 0.5, "acc": 1.0}\n{"step": 2, "loss": "nan"}\n')
  with pytest.raises(TypeError, match=r"`writers\[0\]` must have"):
    jh.MultiWriter([object()])


def test_writers_write_on_the_primary_process_only(tmp_path, monkeypatch):
  monkeypatch.setattr(writers_lib, "_is_primary", lambda: False)
  for writer in (jh.CsvWriter(str(tmp_path / "m.csv")),
                 jh.JsonlWriter(str(tmp_path / "m.jsonl")),
                 jh.TensorBoardWriter(str(tmp_path / "tb"))):
    writer.write_scalars(1, {"loss": 1.0})
    writer.close()
  assert os.listdir(tmp_path) == []
  jh.CsvWriter(str(tmp_path / "all.csv"), primary_only=False).write_scalars(
      1, {"loss": 1.0})
  assert os.listdir(tmp_path) == ["all.csv"]


def test_summary_hooks_share_one_writer():
  hooks = session_lib.summary_hooks(summary_dir="runs/x",
                                    save_summaries_steps=100,
                                    save_summaries_secs=None,
                                    log_step_count_steps=50)
  counter, summary = hooks
  assert type(counter) is jh.StepCounterHook
  assert type(summary) is jh.SummarySaverHook
  assert counter._writer is summary.writer
  assert isinstance(summary.writer, jh.TensorBoardWriter)
  assert (counter.timer.every_steps, summary.timer.every_steps) == (50, 100)
  secs = session_lib.summary_hooks(summary_dir="runs/x",
                                   save_summaries_steps=100,
                                   save_summaries_secs=60,
                                   log_step_count_steps=0)
  assert [(h.timer.every_secs, h.timer.every_steps) for h in secs] == [
      (60.0, None)]
  assert session_lib.summary_hooks(summary_dir=None, save_summaries_steps=100,
                                   save_summaries_secs=None,
                                   log_step_count_steps=0) == []


def test_monitored_session_writes_summaries_and_step_rate(tmp_path):
  train_step = scripted_step(LOSSES)
  with jh.MonitoredTrainingSession(
      train_step, state_at(), summary_dir=str(tmp_path),
      save_summaries_steps=5, log_step_count_steps=10,
      hooks=[jh.StopAtStepHook(last_step=30)]) as sess:
    while not sess.should_stop():
      sess.run()
  events = read_events(tmp_path)
  assert sorted(events) == ["double", "global_step/sec", "loss"]
  steps = [5, 10, 15, 20, 25, 30]
  assert events["loss"] == list(zip(steps, expected(LOSSES, steps)))
  # StepCounterHook: first report at step 1 starts the clock, then rates.
  assert [s for s, _ in events["global_step/sec"]] == [10, 20, 30]
  assert all(v > 0 for _, v in events["global_step/sec"])


def test_unwritable_output_dir_fails_at_begin(tmp_path):
  (tmp_path / "file").write_text("")
  logdir = str(tmp_path / "file" / "logs")
  hook = jh.SummarySaverHook(save_steps=1, output_dir=logdir)
  step = jh.wrap(scripted_step(LOSSES), [hook])
  with pytest.raises(OSError) as info:
    step.begin(state_at())
  assert str(info.value).startswith(
      f"`output_dir` {logdir!r} is not a writable directory: "
      "NotADirectoryError: ")
  assert isinstance(info.value.__cause__, NotADirectoryError)


def test_tensorboard_writer_flushes_every_flush_secs(tmp_path):
  clock = FakeClock()
  writer = jh.TensorBoardWriter(str(tmp_path), flush_secs=10, clock=clock)
  writer.write_scalars(1, {"loss": 1.0, "acc": 0.5})
  assert read_events(tmp_path) == {}  # still in the file buffer
  clock.advance(10)
  writer.write_scalars(2, {"loss": 0.5})
  assert read_events(tmp_path) == {"loss": [(1, 1.0), (2, 0.5)],
                                   "acc": [(1, 0.5)]}
  writer.write_scalars(3, {"loss": 0.25})
  writer.close()
  writer.write_scalars(4, {"loss": 0.125})  # a second file, same directory
  writer.close()
  assert len(os.listdir(tmp_path)) == 2
  assert read_events(tmp_path)["loss"] == [(1, 1.0), (2, 0.5), (3, 0.25),
                                           (4, 0.125)]


def test_step_rate_alone_is_flushed_at_end(tmp_path):
  hooks = session_lib.summary_hooks(summary_dir=str(tmp_path),
                                    save_summaries_steps=0,
                                    save_summaries_secs=None,
                                    log_step_count_steps=5)
  assert [type(h) for h in hooks] == [jh.StepCounterHook]
  run(scripted_step(LOSSES), [jh.StopAtStepHook(last_step=10)] + hooks)
  events = read_events(tmp_path)
  assert [s for s, _ in events["global_step/sec"]] == [5, 10]


def test_step_counter_output_dir_writes_the_rate_and_closes(tmp_path):
  clock = FakeClock()
  logdir = tmp_path / "speed"
  hook = jh.StepCounterHook(every_n_steps=5, output_dir=str(logdir),
                            clock=clock)
  ticking = jh.LambdaHook(before_run=lambda ctx: clock.advance(0.25))
  run(scripted_step(LOSSES), [jh.StopAtStepHook(last_step=20), ticking, hook])
  assert read_events(logdir) == {
      "global_step/sec": [(5, 4.0), (10, 4.0), (15, 4.0), (20, 4.0)]}
  assert len(os.listdir(logdir)) == 1
  assert hook._writer._handle is None   # closed in end


def test_step_counter_unwritable_output_dir_fails_at_begin(tmp_path):
  (tmp_path / "file").write_text("")
  logdir = str(tmp_path / "file" / "logs")
  step = jh.wrap(scripted_step(LOSSES),
                 [jh.StepCounterHook(every_n_steps=1, output_dir=logdir)])
  with pytest.raises(OSError) as info:
    step.begin(state_at())
  assert str(info.value).startswith(
      f"`output_dir` {logdir!r} is not a writable directory: ")


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(output_dir="d", writer=jh.CsvWriter("x.csv")), ValueError,
     "At most one of `output_dir` and `writer` may be given, got "
     "output_dir='d', writer=CsvWriter"),
    (dict(writer=object()), TypeError, "`writer` must have write_scalars"),
    (dict(summary_writer=3), TypeError, "`writer` must have write_scalars, "
     "flush and close, got 3."),
    (dict(output_dir=3), TypeError, "`output_dir` must be a path, got 3."),
])
def test_step_counter_bad_writer_arguments(kwargs, error, match):
  with pytest.raises(error, match=match):
    jh.StepCounterHook(**kwargs)
