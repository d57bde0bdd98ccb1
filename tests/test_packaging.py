import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def requirement_names(requirements) -> dict[str, str]:
    parsed = {}
    for req in requirements:
        name = re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower().replace("_", "-")
        parsed[name] = req[len(name):].strip()
    return parsed


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = requirement_names(project["dependencies"] + project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = requirement_names([r for r in pip_section if not r.startswith("-e")])
    assert set(listed) == set(declared)
    for name, spec in declared.items():
        if name != "torch":  # environment.yml pins the CPU wheel, as the Makefile does
            assert listed[name] == spec, name
    assert listed["torch"].startswith("==")


def test_constraints_pin_every_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = set(requirement_names(project["dependencies"] + project["optional-dependencies"]["dev"]))
    pins = requirement_names(line for line in (ROOT / "constraints.txt").read_text().splitlines() if line and not line.startswith("#"))
    assert declared <= set(pins) and all(spec.startswith("==") for spec in pins.values())


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
