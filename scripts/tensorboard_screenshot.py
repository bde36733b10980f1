"""Takes a screenshot of TensorBoard's scalars dashboard for the README.

  python scripts/tensorboard_screenshot.py                  # -> docs/tensorboard.png
  python scripts/tensorboard_screenshot.py --logdir runs/digits   # an existing run

Without ``--logdir`` it first trains the digits example (its model, data and
train step, from ``examples/train_digits.py``) for ``--steps`` steps with a
``SummarySaverHook`` and a ``StepCounterHook`` writing to a temporary
directory. Then it starts ``tensorboard --logdir`` on 127.0.0.1 with a free
port, waits until TensorBoard serves the ``loss`` tag, and has headless
Chromium (Debian: ``apt-get install -y chromium``) save the page.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
    "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--hide-scrollbars",
    "--force-device-scale-factor=1",
]


def load_example(path: pathlib.Path):
  spec = importlib.util.spec_from_file_location("train_digits", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # Flax modules are dataclasses
  spec.loader.exec_module(module)
  return module


def train(example_path: pathlib.Path, logdir: str, steps: int) -> None:
  """Trains the example's model with summaries written to ``logdir``."""
  import jaxhooks as jh  # pylint: disable=g-import-not-at-top
  example = load_example(example_path)
  (x_train, y_train), _ = example.load_data()
  batches = example.Batches(x_train, y_train, 64)
  summaries = jh.SummarySaverHook(save_steps=10, output_dir=logdir,
                                  scalars=["loss", "accuracy"])
  step = jh.wrap(example.train_step, hooks=[
      jh.StopAtStepHook(last_step=steps),
      summaries,
      jh.StepCounterHook(every_n_steps=50, writer=summaries.writer),
      jh.ProgressBarHook(metrics=["loss"], every_n_iter=100),
  ])
  state = step.begin(example.create_state())
  while not step.should_stop:
    state, _, _ = step(state, next(batches))
  step.end(state)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def wait_for_tag(port: int, tag: str, timeout: float = 120.0) -> None:
  url = f"http://127.0.0.1:{port}/data/plugin/scalars/tags"
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    try:
      with urllib.request.urlopen(url, timeout=5) as r:
        runs = json.load(r)
      if any(tag in tags for tags in runs.values()):
        return
    except OSError:
      pass
    time.sleep(0.5)
  raise TimeoutError(f"TensorBoard did not serve the tag {tag!r} at {url}.")


def shrink(png: pathlib.Path) -> None:
  """Re-encodes the PNG with a 256-colour palette, when Pillow is there."""
  try:
    from PIL import Image  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  with Image.open(png) as im:
    small = im.convert("RGB").quantize(colors=256)
  small.save(png, optimize=True)


def screenshot(logdir: str, out: pathlib.Path, *, width: int, height: int,
               view: str) -> None:
  port = free_port()
  tb = subprocess.Popen(
      [shutil.which("tensorboard") or "tensorboard", "--logdir", logdir,
       "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1"],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  profile = tempfile.mkdtemp(prefix="chromium-")
  try:
    wait_for_tag(port, "loss")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
      raise FileNotFoundError(
          "chromium is not installed: `apt-get install -y chromium`.")
    url = f"http://127.0.0.1:{port}/?darkMode=false#{view}"
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
         f"--window-size={width},{height}", "--virtual-time-budget=20000",
         f"--screenshot={out}", url],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        timeout=180)
  finally:
    tb.terminate()
    tb.wait(timeout=30)
    shutil.rmtree(profile, ignore_errors=True)
  shrink(out)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--logdir", help="an existing run (skips training)")
  parser.add_argument("--example", default=str(ROOT / "examples" /
                                               "train_digits.py"))
  parser.add_argument("--steps", type=int, default=1500)
  parser.add_argument("--out", default=str(ROOT / "docs" / "tensorboard.png"))
  parser.add_argument("--width", type=int, default=1280)
  parser.add_argument("--height", type=int, default=860)
  parser.add_argument("--view", default="scalars&tagFilter=loss",
                      help="the dashboard, as in TensorBoard's URL fragment")
  args = parser.parse_args(argv)
  logdir = args.logdir
  tmp = None
  if logdir is None:
    tmp = tempfile.mkdtemp(prefix="jaxhooks-")
    logdir = os.path.join(tmp, "digits")
    train(pathlib.Path(args.example), logdir, args.steps)
  try:
    out = pathlib.Path(args.out)
    screenshot(logdir, out, width=args.width, height=args.height,
               view=args.view)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
  finally:
    if tmp is not None:
      shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
