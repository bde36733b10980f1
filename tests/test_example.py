"""The README's main job: examples/train_digits.py trains and reports."""

import importlib.util
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_example():
  spec = importlib.util.spec_from_file_location(
      "train_digits", ROOT / "examples" / "train_digits.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # Flax modules are dataclasses
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow
def test_train_digits_learns_and_logs_every_n_steps(capsys, tmp_path):
  example = _load_example()
  accuracy = example.main(["--steps", "300", "--log-every", "100",
                           "--logdir", str(tmp_path),
                           "--checkpoint-dir", str(tmp_path / "ckpt"),
                           "--save-every", "200"])
  out = capsys.readouterr().out.splitlines()
  logged_steps = [line.split(",")[0] for line in out if line.startswith("step = ")]
  assert logged_steps == ["step = 100", "step = 200", "step = 300"]
  assert sum(line.startswith("global_step/sec: ") for line in out) == 3
  assert out[-1].startswith("trained 300 steps; test accuracy ")
  assert accuracy > 0.9
  assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1
  assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["200", "300"]
  # Run again: it resumes at step 300 and has nothing left to train.
  again = example.main(["--steps", "300", "--logdir", str(tmp_path),
                        "--checkpoint-dir", str(tmp_path / "ckpt")])
  out = capsys.readouterr().out.splitlines()
  assert out[0] == (f"Restored the checkpoint of step 300 from "
                    f"{tmp_path / 'ckpt'}.")
  assert not any(line.startswith("step = ") for line in out)
  assert again == accuracy


def test_batches_resume_from_their_saved_position():
  example = _load_example()
  (x, y), _ = example.load_data()
  a = example.Batches(x, y, 100)
  for _ in range(20):  # crosses epoch boundaries
    next(a)
  saved = a.get_state()
  expected = [next(a)[1].tolist() for _ in range(5)]
  b = example.Batches(x, y, 100)
  b.set_state(saved)
  assert [next(b)[1].tolist() for _ in range(5)] == expected
