"""The package ships its type information and CI type-checks it."""

import pathlib
import tomllib

import jaxhooks

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
  return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_package_ships_py_typed_marker():
  assert (pathlib.Path(jaxhooks.__file__).parent / "py.typed").is_file()
  package_data = _pyproject()["tool"]["setuptools"]["package-data"]
  assert package_data == {"jaxhooks": ["py.typed"]}


def test_mypy_is_configured_for_the_package_without_blanket_ignores():
  project = _pyproject()
  config = project["tool"]["mypy"]
  assert config["files"] == ["jaxhooks"]
  assert "ignore_errors" not in config
  assert "ignore_missing_imports" not in config
  for override in config.get("overrides", []):
    assert "ignore_errors" not in override
    assert not any(m.startswith("jaxhooks") for m in override["module"])
  assert any(dep.startswith("mypy")
             for dep in project["project"]["optional-dependencies"]["test"])


def test_ci_runs_mypy_before_the_tests():
  lines = (ROOT / ".ci" / "run").read_text().splitlines()
  commands = [line for line in lines if "pip install" in line]
  assert commands == [
      'pip install -e ".[test]" && python -m mypy && python -m pytest -q']


def test_no_blanket_type_ignores_in_the_package():
  ignores = []
  for path in sorted((ROOT / "jaxhooks").glob("*.py")):
    for number, line in enumerate(path.read_text().splitlines(), 1):
      if "type: ignore" in line:
        ignores.append((path.name, number, "type: ignore[" in line))
  assert ignores and [i for i in ignores if not i[2]] == []
  assert len(ignores) <= 5
