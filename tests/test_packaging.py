"""The distribution's metadata: license text, SPDX expression, changelog."""

import os
import pathlib
import subprocess
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_license_file_is_the_apache_2_text_named_by_the_metadata():
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  assert project["license"] == "Apache-2.0"
  assert project["license-files"] == ["LICENSE"]
  text = (ROOT / "LICENSE").read_text()
  assert text.split("\n")[1].strip() == "Apache License"
  assert "Version 2.0, January 2004" in text
  assert "END OF TERMS AND CONDITIONS" in text
  assert len(text) == 11358  # the text of apache.org/licenses/LICENSE-2.0.txt


def test_changelog_has_an_unreleased_section():
  lines = (ROOT / "CHANGELOG.md").read_text().splitlines()
  assert lines[0] == "# Changelog"
  assert "## Unreleased" in lines


def _collect(*args):
  """The test ids pytest collects with ``args`` (a subprocess, killed at
  its deadline)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run(
      [sys.executable, "-m", "pytest", "--collect-only", "-q",
       "-p", "no:cacheprovider", *args], cwd=ROOT, env=env,
      capture_output=True, text=True, timeout=120)
  assert out.returncode in (0, 5), out.stdout + out.stderr  # 5: none
  return [line for line in out.stdout.splitlines() if "::" in line]


@pytest.mark.slow
def test_the_slow_marker_is_registered_and_marks_the_subprocess_tests(
    request):
  assert any(m.startswith("slow: ")
             for m in request.config.getini("markers"))
  assert "--strict-markers" in request.config.getini("addopts")
  slow = _collect("-m", "slow", "tests")
  assert sorted({i.split("::")[0] for i in slow}) == [
      "tests/test_example.py", "tests/test_failure_paths.py",
      "tests/test_multiprocess.py", "tests/test_packaging.py",
      "tests/test_readme.py", "tests/test_reporting_checks.py",
      "tests/test_resume_kill.py", "tests/test_snapshot.py"]
  every = _collect("tests/test_multiprocess.py", "tests/test_resume_kill.py")
  assert every and set(every) <= set(slow)


def test_one_fake_clock_and_helpers_imported_from_util():
  texts = {p.name: p.read_text() for p in (ROOT / "tests").glob("*.py")}
  clock, conftest = "class " + "FakeClock", "from " + "conftest import"
  assert sorted(n for n, t in texts.items() if clock in t) == ["_util.py"]
  assert sorted(n for n, t in texts.items() if conftest in t) == []
