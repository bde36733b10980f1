"""The README's quick start runs as written: its Python blocks, in order, as
one script in a fresh working directory, twice (the second run resumes)."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def quick_start_blocks():
  """The ```python blocks of the README's "## Quick start" section."""
  text = (ROOT / "README.md").read_text()
  section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
  return re.findall(r"^```python\n(.*?)^```$", section, re.M | re.S)


def run_script(code, cwd):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_quick_start_runs_and_resumes(tmp_path):
  blocks = quick_start_blocks()
  assert len(blocks) == 2   # the wrap() loop and MonitoredTrainingSession
  script = "\n".join(blocks)
  first = run_script(script, tmp_path)
  assert first.returncode == 0, first.stderr
  assert first.stdout == "stopped at step 300\nstopped at step 300\n"
  logged = [line.split(",")[0] for line in first.stderr.splitlines()
            if line.startswith("step = ")]
  assert logged == ["step = 100", "step = 200", "step = 300"]
  runs = tmp_path / "runs"
  assert sorted(os.listdir(runs / "quickstart")) == ["100", "200", "300"]
  tf_dir = sorted(os.listdir(runs / "quickstart-tf"))
  assert "300" in tf_dir   # the final save
  assert any(name.startswith("events.out.tfevents") for name in tf_dir)

  again = run_script(script, tmp_path)
  assert again.returncode == 0, again.stderr
  # Both restore step 300; num_steps=300 is kept in the checkpoint, so the
  # restarted session stops where the first one did.
  assert again.stdout == "stopped at step 300\nstopped at step 300\n"
  restored = [line for line in again.stderr.splitlines()
              if line.startswith("Restored the checkpoint")]
  assert restored == [
      f"Restored the checkpoint of step 300 from {runs / 'quickstart'}.",
      f"Restored the checkpoint of step 300 from {runs / 'quickstart-tf'}."]
  assert not any(line.startswith("step = ")
                 for line in again.stderr.splitlines())
