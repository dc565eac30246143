"""The layer order of the package (README "Architecture"): every import, including the ones inside
functions, goes from a layer to a lower one, never back and never sideways between units."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "taildistill"

# lowest first; a unit is a top-level module or subpackage of taildistill
LAYERS = [
    {"errors", "version"},
    {"registry", "typed", "files"},
    {"config"},
    {"rundir"},
    {"teachers"},
    {"data"},
    {"models"},
    {"losses"},
    {"methods"},
    {"eval"},
    {"experiment"},
    {"engine"},
    {"report"},
    {"scheduler"},
    {"evaluation", "bench", "reproduce", "sweep", "demo"},
    {"cli"},
    {"__init__", "__main__", "api"},
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def _unit(module: str) -> str:
    """'taildistill.engine.trainer' -> 'engine'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every internal import of the file, at any depth."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "taildistill"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "taildistill":
                continue
            if node.module is None or mod == "taildistill":  # `from . import x` / `from taildistill import x`
                out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, mod))
    return out


FILES = sorted(PKG.rglob("*.py"))


def test_every_unit_has_a_layer():
    units = {_unit(_module_name(p)) for p in FILES}
    assert units <= set(RANK), units - set(RANK)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_go_down_the_layers(path):
    src = _unit(_module_name(path))
    bad = []
    for line, target in _imports(path):
        dst = _unit(target)
        if dst == src:
            continue
        if RANK[dst] >= RANK[src]:
            bad.append(f"line {line}: {src} (layer {RANK[src]}) imports {target} (layer {RANK[dst]})")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_function_local_and_relative_imports(tmp_path):
    # the checker itself must catch a back-arrow hidden in a function
    probe = PKG / "config.py"
    assert any(t.startswith("taildistill.typed") for _, t in _imports(probe))
    fake = PKG / "engine" / "_probe_for_test.py"
    fake.write_text("def f():\n    from ..cli import main\n    from . import trainer\n")
    try:
        found = [t for _, t in _imports(fake)]
        assert "taildistill.cli" in found and "taildistill.engine.trainer" in found
    finally:
        fake.unlink()


def test_run_directory_file_names_live_in_one_module():
    """Only rundir.py spells the run directory's file names."""
    names = ("final.json", "metrics.jsonl", "last_state.pt", "last.safetensors", "best.safetensors", "data.json",
             "env.json", "config.yaml")
    offenders = []
    for path in FILES:
        if path.name == "rundir.py":
            continue
        code = path.read_text()
        offenders += [f"{path.relative_to(PKG)}: {n}" for n in names if f"\"{n}\"" in code or f"/{n}\"" in code or f"'{n}'" in code]
    assert not offenders, offenders
