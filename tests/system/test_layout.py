"""The structure the design promises: import layers, no import cycles, torch only in
``embed``, module and function sizes, and the ``hespot`` command over every entry point."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from data import commands
from data.cli import run_cli
from data.errors import ConfigError, DataError, Problem

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("data", "embed", "regress")
# embed reaches regress only through the torch-free result contract: what a prediction is
# trained on (targets), how it is scored (metrics) and how it is written (results)
RESULT_CONTRACT = {"regress.results", "regress.metrics", "regress.targets"}
TORCH_LIKE = {"torch", "torchvision", "timm", "albumentations", "safetensors"}
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if "samples" in path.parts:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file (TYPE_CHECKING blocks and
    function bodies included), as absolute names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def _internal(name: str) -> str | None:
    """The project module an imported name refers to (longest known prefix), or None."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in MODULES:
            return candidate
    return None


GRAPH = {m: {i for n in _imports(p) if (i := _internal(n)) and i != m}
         for m, p in MODULES.items()}


def test_modules_found():
    assert {"data.store", "data.cli", "data.errors", "embed.run", "regress.run",
            "regress.results", "embed.finetune", "regress.report"} <= set(MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_import_layers(module):
    imported = GRAPH[module]
    third_party = {n.split(".")[0] for n in _imports(MODULES[module])}
    if module.startswith("data"):
        assert not {i for i in imported if not i.startswith("data")}, imported
        assert not third_party & TORCH_LIKE
    elif module.startswith("regress"):
        assert not {i for i in imported if i.startswith("embed")}, imported
        assert not third_party & TORCH_LIKE
    else:
        reached = {i for i in imported if i.startswith("regress")}
        assert reached <= RESULT_CONTRACT, f"{module} imports {reached - RESULT_CONTRACT}"


def test_no_import_cycles():
    """Tarjan's strongly connected components over explicit imports (type-only included)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in GRAPH:
        if m not in index:
            visit(m)
    assert cycles == []


def test_stage2_and_report_never_import_torch():
    code = ("import sys, regress, regress.report, regress.run, regress.tune, regress.submit, "
            "data.store, data.commands, data.check\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{sorted(TORCH_LIKE)!r})\n"
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("module", sorted(MODULES))
def test_sizes(module):
    path = MODULES[module]
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path}: split it"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            assert n <= MAX_FUNCTION_LINES, f"{path}:{node.lineno} {node.name} has {n} lines"


# ---- the hespot command --------------------------------------------------------------------
def test_hespot_help_lists_every_command():
    exe = Path(sys.executable).with_name("hespot")
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "data.commands"]
    proc = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for name, (_, text) in commands.COMMANDS.items():
        assert f"  {name}" in proc.stdout and text in proc.stdout


@pytest.mark.parametrize("name", sorted(commands.COMMANDS))
def test_each_command_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        commands.main([name, "--help"])
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_unknown_command(capsys):
    assert commands.main(["nope"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "embed" in err


@pytest.mark.parametrize("argv, words", [
    ("embed --backbones nope", "nope|known backbones"),
    ("embed --tta 3", "tta"),
    ("regress --recipe nope", "nope|known"),
    ("regress --models ridge,svm", "svm|known"),
    ("regress --targets nope", "nope|spot_rank"),
    ("tune --recipes nope", "nope|known"),
    ("tune --targets nope", "nope|spot_rank"),
    ("embed --backbones tiny_random+0", "crop sizes|at least 1"),
    ("embed --patch-um -5", "--patch-um|positive"),
    ("embed --weights no-such-weights.safetensors", "no-such-weights|no such file"),
    ("regress --ridge-alpha-max 0.01", "--ridge-alpha-max|at least"),
    ("regress --context-k -1", "--context-k|at least 0"),
    ("regress --smooth-w 2", "--smooth-w|[0, 1]"),
    ("finetune --preset nope", "nope|known"),
    ("finetune --lr -1", "lr > 0"),
    ("finetune --workers -1", "workers >= 0"),
    ("bench-finetune --device bogus", "--device|bogus"),
    ("bench-embed --backbone nope", "nope|known backbones"),
])
def test_bad_settings_exit_2_with_one_line_before_any_work(argv, words, tmp_path, capsys):
    """Names are checked first: the HDF5 file named here does not even exist. (``argv``:
    the command line; ``words``: what the message names, separated by ``|``.)"""
    argv, words = argv.split(), words.split("|")
    paths = {"embed": ["--h5", str(tmp_path / "no.h5"), "--store", str(tmp_path / "s.zarr")],
             "regress": ["--h5", str(tmp_path / "no.h5"), "--out", str(tmp_path / "out")],
             "tune": ["--h5", str(tmp_path / "no.h5"), "--out", str(tmp_path / "out")],
             "finetune": ["--h5", str(tmp_path / "no.h5"), "--out", str(tmp_path / "out")],
             "bench-embed": ["--h5", str(tmp_path / "no.h5")],
             "bench-finetune": ["--h5", str(tmp_path / "no.h5")]}[argv[0]]
    try:
        code = commands.main([*argv, *paths])
    except SystemExit as exc:  # argparse's own checks (choices, types)
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("hespot: "), err
    assert all(w in err for w in words), err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_only_user_errors_are_one_line():
    def bad_input(argv):
        raise DataError(Problem("f.h5", "S_1", "x", "finite", "NaN", "fix it"))

    def bad_setting(argv):
        raise ConfigError("unknown recipe 'x'")

    def bug(argv):
        raise ValueError("an internal bug")

    assert run_cli(bad_input, []) == 2
    assert run_cli(bad_setting, []) == 2
    with pytest.raises(ValueError, match="internal bug"):
        run_cli(bug, [])
