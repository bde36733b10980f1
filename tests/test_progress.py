"""ProgressBarHook: bounded plain lines in a log, a tqdm bar on a terminal,
device reads on refresh steps only."""

import io
import sys

import jax
import jax.numpy as jnp
import pytest

import jaxhooks as jh
from _util import FakeClock
from observability_util import FetchSpy, run, scripted_step, state_at

LOSSES = [1.0 / k for k in range(1, 1001)]


class TtyStream(io.StringIO):

  def isatty(self):
    return True


def ticking(clock, secs):
  """A hook that moves the fake clock ``secs`` before every step."""
  return jh.LambdaHook(before_run=lambda ctx: clock.advance(secs))


def test_plain_lines_are_rate_limited_with_exact_counts(monkeypatch):
  clock, out = FakeClock(), io.StringIO()
  spy = FetchSpy(monkeypatch)
  hook = jh.ProgressBarHook(metrics=["loss"], every_n_secs=30, stream=out,
                            clock=clock)
  run(scripted_step(LOSSES), [jh.StopAtStepHook(last_step=1000),
                              ticking(clock, 0.25), hook])
  assert hook.plain is True
  lines = out.getvalue().splitlines()
  assert "\r" not in out.getvalue()
  # 250 s of training, a line every 30 s (120 steps at 4 steps/s): 9 + last.
  assert len(lines) == 10
  assert lines[0] == "train: step 1/1000 (0%) | loss=1"  # no rate yet
  assert lines[1] == ("train: step 121/1000 (12%) | 4 steps/s | ETA 0:03:40 | "
                      "loss=0.008264")
  assert [int(x.split()[2].split("/")[0]) for x in lines] == [
      1, 121, 241, 361, 481, 601, 721, 841, 961, 1000]
  assert lines[-1] == ("train: step 1000/1000 (100%) | 4 steps/s | "
                       "done in 0:04:10 | loss=0.001")
  assert spy.calls == 9 + 1  # refresh steps, and the last line in end()


def test_step_refresh_and_total_from_restored_stop_hook():
  clock, out = FakeClock(), io.StringIO()
  hook = jh.ProgressBarHook(every_n_iter=40, stream=out, clock=clock,
                            desc="fit")
  run(scripted_step(LOSSES), [hook, ticking(clock, 0.5),
                              jh.StopAtStepHook(num_steps=100)],
      state=state_at(500))
  assert out.getvalue().splitlines() == [
      "fit: step 520/600 (86%)",
      "fit: step 560/600 (93%) | 2 steps/s | ETA 0:00:20",
      "fit: step 600/600 (100%) | 2 steps/s | done in 0:00:50",
  ]


def test_without_a_total_there_is_no_eta():
  clock, out = FakeClock(), io.StringIO()
  data = iter(range(7))
  feed = jh.FeedFnHook(lambda: next(data))
  hook = jh.ProgressBarHook(every_n_iter=5, stream=out, clock=clock)
  run(scripted_step(LOSSES), [feed, ticking(clock, 1.0), hook])
  assert out.getvalue().splitlines() == [
      "train: step 5",
      "train: step 7 | 1 steps/s | done in 0:00:07",
  ]


def test_zero_steps_after_restore_writes_one_line():
  out = io.StringIO()
  hook = jh.ProgressBarHook(metrics=["loss"], stream=out, clock=FakeClock())
  run(scripted_step(LOSSES), [jh.StopAtStepHook(last_step=10), hook],
      state=state_at(10))
  assert out.getvalue() == "train: step 10/10 (100%) | done in 0:00:00\n"


def test_terminal_bar_reads_metrics_on_refresh_steps_only(monkeypatch):
  out = TtyStream()
  spy = FetchSpy(monkeypatch)
  hook = jh.ProgressBarHook(metrics={"l": "loss"}, every_n_iter=10,
                            stream=out)
  run(scripted_step(LOSSES), [jh.StopAtStepHook(last_step=100), hook])
  assert hook.plain is False
  text = out.getvalue()
  assert "\r" in text and text.count("\n") == 1  # one bar, redrawn
  final = text.rsplit("\r", 1)[-1]
  assert final.startswith("train: 100%") and "100/100" in final
  assert "l=0.01" in final
  assert spy.calls == 10 + 1


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(total=-1), ValueError, "`total` must be a step >= 0, got -1"),
    (dict(every_n_iter=5, every_n_secs=1.0), ValueError, "Exactly one of"),
    (dict(every_n_iter=0), ValueError, "`every_n_iter` must be positive"),
    (dict(stream=3), TypeError, "`stream` must have a `write` method"),
    (dict(metrics=[1.5]), TypeError, "must be an output name"),
])
def test_bad_arguments(kwargs, error, match):
  with pytest.raises(error, match=match):
    jh.ProgressBarHook(**kwargs)


def test_without_tqdm_plain_lines_or_a_clear_error(monkeypatch):
  monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails
  auto = jh.ProgressBarHook(stream=TtyStream())
  auto.begin()
  assert auto.plain is True
  with pytest.raises(ImportError, match=r"`pip install jaxhooks\[progress\]`"):
    jh.ProgressBarHook(plain=False).begin()


def test_final_metrics_read_global_step_with_a_custom_step_fn():
  @jax.jit
  def tuple_step(state, batch):
    del batch
    loss, counters = state  # an NNX-like state: no `.step`, no "step" key
    return (loss / 2, {"n": counters["n"] + 1}), {"loss": loss / 2}

  out = io.StringIO()
  hook = jh.ProgressBarHook(metrics={"s": jh.GLOBAL_STEP, "loss": "loss"},
                            every_n_iter=2, stream=out, plain=True,
                            clock=FakeClock())
  step = jh.wrap(tuple_step, [jh.StopAtStepHook(last_step=3), hook],
                 step_fn=lambda s: s[1]["n"])
  state = step.begin((jnp.float32(1.0), {"n": jnp.asarray(0, jnp.int32)}))
  while not step.should_stop:
    state, _, _ = step(state)
  step.end(state)
  assert out.getvalue().splitlines() == [
      "train: step 2/3 (66%) | loss=0.25, s=2",
      "train: step 3/3 (100%) | done in 0:00:00 | loss=0.125, s=3",
  ]
