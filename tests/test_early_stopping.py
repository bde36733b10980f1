"""EarlyStoppingHook: the exact stop step of scripted metrics, and patience
that survives a restore through the hook's state_dict."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxhooks as jh
from observability_util import FetchSpy, run, scripted_step, state_at

# Checked every 2 steps; odd steps hold 0.0, which would "improve" if read.
CHECKED = {2: 10.0, 4: 8.0, 6: 8.5, 8: 7.95, 10: 7.0, 12: 7.5, 14: 7.3,
           16: 7.6, 18: 7.4, 20: 7.5}
LOSSES = [CHECKED.get(s, 0.0) for s in range(1, 21)]


def hook(**kwargs):
  return jh.EarlyStoppingHook("loss", patience=3, min_delta=0.1,
                              every_n_iter=2, **kwargs)


def test_stops_at_the_exact_step(monkeypatch):
  spy = FetchSpy(monkeypatch)
  es = hook()
  step = run(scripted_step(LOSSES), [jh.StopAtStepHook(last_step=20), es])
  # 10 best@2, 8 best@4, 8.5 w1, 7.95 w2 (< min_delta), 7 best@10,
  # 7.5 w1, 7.3 w2, 7.6 w3 -> stop at 16.
  assert (step.step, es.stopped_step) == (16, 16)
  assert (es.best, es.best_step, es.wait) == (7.0, 10, 3)
  assert spy.calls == 8  # the checks only


def test_patience_resumes_after_a_restore_from_an_orbax_checkpoint(tmp_path):
  train_step = scripted_step(LOSSES)
  first = hook()
  step = run(train_step, [jh.StopAtStepHook(last_step=13), first,
                          jh.CheckpointSaverHook(tmp_path, save_steps=100)])
  assert (step.step, first.wait, first.stopped_step) == (13, 1, None)
  # The restart restores step 13 and the hook's counters from the
  # checkpoint, and stops where an uninterrupted run does.
  resumed = hook()
  saver = jh.CheckpointSaverHook(tmp_path, save_steps=100)
  step = run(train_step, [jh.StopAtStepHook(last_step=20), resumed, saver])
  assert saver.restored_step == 13
  assert (step.step, resumed.stopped_step) == (16, 16)
  assert (resumed.best, resumed.best_step, resumed.wait) == (7.0, 10, 3)
  # Without the restored counters the run goes on to step 20.
  fresh = hook()
  step = run(train_step, [jh.StopAtStepHook(last_step=20), fresh],
             state=state_at(13))
  assert (step.step, fresh.best, fresh.best_step) == (
      20, float(np.float32(7.3)), 14)


def test_max_mode_with_baseline():
  acc = [0.3, 0.4, 0.6, 0.55, 0.58, 0.59, 0.9]
  es = jh.EarlyStoppingHook("loss", mode="max", patience=3, baseline=0.5)
  step = run(scripted_step(acc), [jh.StopAtStepHook(last_step=7), es])
  assert (step.step, es.best_step) == (6, 3)
  assert es.best == pytest.approx(0.6)
  never = jh.EarlyStoppingHook("loss", mode="max", patience=2, baseline=0.95)
  assert run(scripted_step(acc), [jh.StopAtStepHook(last_step=7),
                                  never]).step == 2
  assert never.best == 0.95 and never.best_step is None


def test_nan_never_improves_and_patience_zero():
  es = jh.EarlyStoppingHook("loss", patience=2)
  step = run(scripted_step([1.0, math.nan, math.nan, 0.0]),
             [jh.StopAtStepHook(last_step=4), es])
  assert (step.step, es.best, es.best_step) == (3, 1.0, 1)
  es = jh.EarlyStoppingHook("loss", patience=0)
  assert run(scripted_step([3.0, 2.0, 2.0, 1.0]),
             [jh.StopAtStepHook(last_step=4), es]).step == 3


def test_eval_fn_runs_on_check_steps_only():
  by_step = {3: 4.5, 6: 3.0, 9: 3.5, 12: 3.2}   # other steps: 0.0, unread
  val = jnp.asarray([by_step.get(s, 0.0) for s in range(1, 16)], jnp.float32)
  calls = []

  @jax.jit
  def evaluate(state):
    return {"val_loss": val[state["step"] - 1], "other": 0.0}

  def eval_fn(state):
    calls.append(1)
    return evaluate(state)
  es = jh.EarlyStoppingHook("val_loss", patience=2, every_n_iter=3,
                            eval_fn=eval_fn)
  step = run(scripted_step([0.0] * 15), [jh.StopAtStepHook(last_step=15), es])
  assert (step.step, es.stopped_step, len(calls)) == (12, 12, 4)
  assert (es.best, es.best_step) == (3.0, 6)


@pytest.mark.parametrize("args, kwargs, error, match", [
    (("loss",), dict(mode="avg"), ValueError, "`mode` must be 'min' or 'max'"),
    (("loss",), dict(patience=-1), ValueError, "`patience` must be an int"),
    (("loss",), dict(min_delta=-0.1), ValueError, "`min_delta` must be >= 0"),
    (("loss",), dict(every_n_iter=0), ValueError, "`every_n_iter` must be"),
    (("loss",), dict(baseline="x"), ValueError, "`baseline` must be a number"),
    ((3,), {}, TypeError, "`metric` must be an output name"),
    (("loss",), dict(eval_fn=1), TypeError, "`eval_fn` must be callable"),
])
def test_bad_arguments(args, kwargs, error, match):
  with pytest.raises(error, match=match):
    jh.EarlyStoppingHook(*args, **kwargs)


def test_bad_metric_values_are_clear_errors():
  with pytest.raises(ValueError, match=r"EarlyStoppingHook `metric` 'vec' is "
                     r"not a scalar: got shape \(3,\) with elements that "
                     r"differ"):
    run(scripted_step([1.0] * 3), [jh.StopAtStepHook(last_step=3),
                                   jh.EarlyStoppingHook("vec")])
  with pytest.raises(ValueError, match=r"without `metric` 'acc'"):
    run(scripted_step([1.0] * 3), [
        jh.StopAtStepHook(last_step=3),
        jh.EarlyStoppingHook("acc", eval_fn=lambda s: {"loss": 1.0})])


def test_arguments_after_metric_are_keyword_only():
  with pytest.raises(TypeError, match="positional argument"):
    jh.EarlyStoppingHook("loss", "max")
  es = jh.EarlyStoppingHook("loss", mode="max", baseline=0.5)
  assert (es.improves(0.6), es.improves(0.4)) == (True, False)
