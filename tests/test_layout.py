"""The layout a reader relies on: notebooks numbered in import order, one module each, in the sub-package its name says."""
import ast, json, re
from pathlib import Path

import depthprune_nb

NBS = Path(__file__).resolve().parents[1] / "nbs"
PKG = Path(depthprune_nb.__file__).parent


def module_notebooks()->dict:
    "Exported module ('engine.exact') -> its notebook, for every numbered notebook."
    out = {}
    for nb in sorted(NBS.glob("[0-9]*.ipynb")):
        m = re.search(r"#\| default_exp ([\w.]+)", nb.read_text())
        assert m, f"{nb.name} exports no module"
        out[m.group(1)] = nb
    return out


def imported_modules(nb:Path)->set:
    "The package's modules a notebook's code cells import, by name; top-level names resolved to where they are defined."
    mods = set()
    for cell in json.loads(nb.read_text())["cells"]:
        if cell["cell_type"] != "code": continue
        if "#| eval: false" in "".join(cell["source"]): continue  # a measurement's command, shown to reproduce it: not run
        src = "\n".join(l for l in "".join(cell["source"]).splitlines() if not l.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("depthprune_nb"):
                if node.module == "depthprune_nb":
                    for a in node.names:
                        obj = getattr(depthprune_nb, a.name)
                        mods.add(getattr(obj, "__name__", "") if isinstance(obj, type(depthprune_nb)) else obj.__module__)
                else: mods.add(node.module)
            elif isinstance(node, ast.Import):
                mods |= {a.name for a in node.names if a.name.startswith("depthprune_nb.")}
    return {m.removeprefix("depthprune_nb.") for m in mods}


def test_notebooks_never_import_a_later_one():
    mods = module_notebooks()
    late = [f"{nb.name} imports {m} ({mods[m].name})" for m, nb in mods.items()
            for m in sorted(imported_modules(nb)) if m in mods and mods[m].name > nb.name]
    assert not late, "reading the notebooks in order meets a name defined later:\n" + "\n".join(late)


def test_notebook_names_follow_their_modules():
    "`20_engine.exact.ipynb` exports `depthprune_nb/engine/exact.py`: the name says where the code lives."
    for mod, nb in module_notebooks().items():
        assert nb.stem.split("_", 1)[1] == mod, f"{nb.name} exports {mod}"
        assert (PKG / (mod.replace(".", "/") + ".py")).exists(), f"{mod} is not exported (run nbdev_export)"


def test_every_module_has_a_notebook():
    mods = set(module_notebooks())
    hand_written = {"_modidx"}
    on_disk = {str(p.relative_to(PKG).with_suffix("")).replace("/", ".") for p in PKG.rglob("*.py")
               if p.name not in ("__init__.py", "__main__.py")}
    assert on_disk - hand_written == mods, f"modules without a notebook: {sorted(on_disk - hand_written - mods)}"
