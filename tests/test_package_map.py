"""The README's map of the package ("A tour of the package") matches the code.

Every module is listed, every name the table puts in backticks exists, and imports run only
from a layer to the layers before it (with the one documented exception).
"""

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lora_np"
# layers.py asks variants for a variant's class inside LoRALinear.__new__ / the use_dora setter
ALLOWED_UPWARD = {("layers", "variants")}


def tour_rows():
    text = (ROOT / "README.md").read_text()
    section = text.split("## A tour of the package", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 4 and cells[0].isdigit():
            files = re.findall(r"`lora_np/([\w/.]+)`", cells[1])
            modules = [f[:-3] if f.endswith(".py") else f.rstrip("/") for f in files]
            rows.append((int(cells[0]), modules, re.findall(r"`([^`]+)`", cells[2])))
    return rows


def levels():
    return {m: level for level, modules, _ in tour_rows() for m in modules}


def package_modules():
    found = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    found |= {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    return found


def test_every_module_is_on_the_map_and_in_order():
    rows = tour_rows()
    assert rows, "the README has no tour table"
    assert [r[0] for r in rows] == sorted(r[0] for r in rows), "the table's layers are not in order"
    on_map = {m for _, modules, _ in rows for m in modules}
    missing = package_modules() - on_map
    assert not missing, f"modules missing from the README's 'A tour of the package': {sorted(missing)}"
    assert not on_map - package_modules(), f"the README names modules that do not exist: {sorted(on_map - package_modules())}"


def _exists(name, modules):
    for module in modules:
        if hasattr(module, name):
            return True
        for value in vars(module).values():
            if isinstance(value, type) and hasattr(value, name):
                return True
        if re.search(rf"self\.{name}\b", Path(module.__file__).read_text()):
            return True  # an instance attribute (params, grads, frozen)
    return False


def test_every_name_on_the_map_exists():
    for _, names, codes in tour_rows():
        modules = [importlib.import_module(f"lora_np.{n}") for n in names]
        for code in codes:
            if re.fullmatch(r"[A-Za-z_]\w*", code):
                assert _exists(code, modules), f"the README's tour names `{code}`, which {names} do not have"


def imports_of(path):
    """The lora_np modules ``path`` imports, at module level or inside a function."""
    package_depth = len(path.relative_to(PACKAGE).parts)  # 1 for lora_np/x.py, 2 for lora_np/sub/x.py
    known = package_modules()
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.level < package_depth:
                continue  # inside its own subpackage
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out |= {a.name for a in node.names if a.name in known}
    return out


def test_imports_only_run_down_the_layers():
    level = levels()
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__init__.py" and path.parent == PACKAGE:
            continue  # the package's front door imports everything
        me = path.stem if path.parent == PACKAGE else path.parent.name
        for other in imports_of(path) - {me}:
            if (me, other) in ALLOWED_UPWARD:
                continue
            assert level[other] < level[me], f"{path.relative_to(ROOT)} (layer {level[me]}) imports {other} (layer {level[other]})"


def test_the_package_docstring_names_the_layers_in_order():
    import lora_np

    level = levels()
    doc = lora_np.__doc__
    mentioned = re.findall(r"^    (\w+)  ", doc, flags=re.M)  # the map: a module name, then two spaces
    assert set(mentioned) <= set(level), f"the docstring names modules not on the README's map: {set(mentioned) - set(level)}"
    core = ["backend", "functional", "layers", "variants", "models", "lora", "adapters", "experiments", "__main__"]
    assert [m for m in mentioned if m in core] == core  # the spine, in order (the README has every module)
    assert [level[m] for m in mentioned] == sorted(level[m] for m in mentioned)


def test_a_name_that_does_not_exist_would_be_caught():
    import lora_np

    assert not _exists("no_such_function_here", [lora_np.layers])
    with pytest.raises(KeyError):
        levels()["no_such_module"]
