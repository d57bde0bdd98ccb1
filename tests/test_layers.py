"""The runtime never imports the training side (STYLE.md, "Layers"): a student who opens a runtime module
to read how generation works should not land in a trainer, and the runtime must not need training code."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "illustrated_sd"
TRAINING = ("train", "world", "evaluate")
RUNTIME = sorted(p for p in PACKAGE.rglob("*.py")
                 if p.relative_to(PACKAGE).parts[0].removesuffix(".py") not in (*TRAINING, "__init__", "__main__"))


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, as an absolute dotted name inside or outside the package."""
    package = ["illustrated_sd", *path.relative_to(PACKAGE).parent.parts]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return found


def test_the_runtime_modules_are_found():
    names = {p.relative_to(PACKAGE).as_posix() for p in RUNTIME}
    assert {"loops/unet.py", "loops/inputs.py", "loops/starts.py", "recording/recorders.py", "loops/text.py", "lessons/clip.py", "trace/unet.py", "cli.py"} <= names


@pytest.mark.parametrize("path", RUNTIME, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_a_runtime_module_imports_no_training_code(path):
    training = sorted(m for m in imported_modules(path) if any(m.startswith(f"illustrated_sd.{t}") for t in TRAINING))
    assert not training, f"{path.name} imports {training}"


def test_the_check_reads_relative_imports():
    clip = imported_modules(PACKAGE / "train" / "stages.py")
    assert "illustrated_sd.lessons.clip.ClipHead" in clip and "illustrated_sd.train.checkpoint" in clip
