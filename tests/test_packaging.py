"""The distribution's metadata: license text, SPDX expression, changelog."""

import pathlib
import tomllib

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
