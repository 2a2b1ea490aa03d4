"""The repository's structure rules, checked on the real tree and shown to catch a planted violation.

1. One import package installed: the distribution ``solider-reid-toolkit`` puts exactly one top-level
   import package, ``soliderkit``, on ``sys.path`` (nothing generic such as ``finetune`` or ``common``).
2. No shadowing: scripts are run by path, which puts the script's folder first on ``sys.path``, so no
   module beside a script may carry the name of a standard-library module or an installed package.
3. Dependency direction: ``soliderkit.pretrain`` and ``soliderkit.finetune`` never import each other,
   the shared core of ``soliderkit`` imports neither, and scripts import only ``soliderkit``, the
   standard library and third-party packages, never each other or a script folder.

Each rule is a function of a root path that returns a list of problems (empty: the rule holds).
"""
from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import setuptools

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = "soliderkit"
DISTRIBUTION = "solider-reid-toolkit"
STAGES = ("pretrain", "finetune")
# Top-level names that must never be importable (and that scripts must never import).
GENERIC_NAMES = ("pretrain", "finetune", "data_shards", "common", "backbone")
# Folders of the repository root that hold no scripts: the library, the tests, generated data and output.
NOT_SCRIPT_FOLDERS = {LIBRARY, "tests", "data", "results", "runs", "build", "dist"}


def _is_under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


# --- 1. one top-level import package -------------------------------------------------------------

def packaged_top_level_problems(root: Path) -> list[str]:
    """What ``pyproject.toml`` packages, as setuptools finds it: only ``soliderkit`` and its subpackages."""
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    tool = pyproject.get("tool", {}).get("setuptools", {})
    problems = [f"pyproject.toml: [tool.setuptools] py-modules installs the top-level module {name!r}"
                for name in tool.get("py-modules", [])]
    packages = tool.get("packages")
    if isinstance(packages, list):
        found = list(packages)
    elif isinstance(packages, dict) and "find" in packages:
        find = packages["find"]
        finder = setuptools.find_namespace_packages if find.get("namespaces", True) else setuptools.find_packages
        found = []
        for where in find.get("where", ["."]):
            found += finder(where=str(root / where), include=find.get("include", ["*"]),
                            exclude=find.get("exclude", []))
    else:
        return problems + ["pyproject.toml: no [tool.setuptools.packages.find] (or packages list): setuptools "
                           "would guess the packages by automatic discovery"]
    problems += [f"pyproject.toml packages {name!r}: only {LIBRARY!r} and its subpackages may be installed"
                 for name in sorted(found) if not _is_under(name, LIBRARY)]
    if LIBRARY not in found:
        problems.append(f"pyproject.toml does not package {LIBRARY!r} (found {sorted(found)})")
    return problems


def _editable_finder_names(path: Path) -> set[str]:
    """Top-level names a setuptools editable finder (``__editable___*_finder.py``) maps to source folders."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id in ("MAPPING", "NAMESPACES") for t in targets):
                names |= {name.split(".")[0] for name in ast.literal_eval(node.value)}
    return names


def installed_top_level_problems(dist: importlib.metadata.Distribution) -> list[str]:
    """What an installed distribution puts on ``sys.path``: its ``top_level.txt``, the top-level entries of
    its RECORD, the names an editable finder maps, and every folder its ``.pth`` files add to ``sys.path``
    (a plain path line there, as older editable installs write, exposes the whole repository)."""
    names = set((dist.read_text("top_level.txt") or "").split())
    problems = []
    for file in dist.files or []:
        top = file.parts[0]
        if len(file.parts) > 1:
            if not top.endswith((".dist-info", ".egg-info", ".data")) and top not in ("__pycache__", ".."):
                names.add(top)
        elif top.endswith(".pth"):
            for line in file.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith(("#", "import ", "import\t")):
                    problems.append(f"{top} adds {line!r} to sys.path: every module there becomes importable")
        elif top.startswith("__editable__") and top.endswith("_finder.py"):
            names |= _editable_finder_names(Path(file.locate()))
        elif top.endswith((".py", ".so", ".pyd")):
            names.add(top.split(".")[0])
    problems += [f"{dist.metadata['Name']} installs the top-level module {name!r}"
                 for name in sorted(names) if name != LIBRARY and not name.startswith("__editable__")]
    if LIBRARY not in names:
        problems.append(f"{dist.metadata['Name']} does not install {LIBRARY!r} (found {sorted(names)})")
    return problems


_TRY_IMPORTS = """
import importlib, json, sys
found = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
        found[name] = True
    except ImportError:
        found[name] = False
print(json.dumps(found))
"""


def importable_outside(names, cwd: Path, python: str = sys.executable, extra_path: str | None = None) -> dict:
    """{name: importable?} in a fresh interpreter started in ``cwd``, with PYTHONPATH only ``extra_path``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if extra_path:
        env["PYTHONPATH"] = extra_path
    done = subprocess.run([python, "-c", _TRY_IMPORTS, *names], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# --- 2. no shadowing beside scripts ---------------------------------------------------------------

def script_folders(root: Path) -> list[Path]:
    """Every folder that directly holds a .py file, outside the library, the tests, generated data,
    hidden folders, virtual environments and build output (the repository root counts when it holds one)."""
    folders = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in ("__pycache__", "node_modules")
                         and not (here == root and d in NOT_SCRIPT_FOLDERS)
                         and not d.endswith(".egg-info") and not (here / d / "pyvenv.cfg").exists())
        if any(f.endswith(".py") for f in files):
            folders.append(here)
    return sorted(folders)


def modules_in(folder: Path) -> dict[str, Path]:
    """The top-level modules a script in ``folder`` sees there: module files and regular packages."""
    modules = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and entry.suffix in (".py", ".so", ".pyd"):
            modules[entry.name.split(".")[0]] = entry
        elif entry.is_dir() and (entry / "__init__.py").is_file():
            modules[entry.name] = entry
    return modules


def shadowing_problems(root: Path, stdlib=None, installed=None) -> list[str]:
    stdlib = sys.stdlib_module_names if stdlib is None else stdlib
    installed = importlib.metadata.packages_distributions() if installed is None else installed
    problems = []
    for folder in script_folders(root):
        for name, path in modules_in(folder).items():
            where = path.relative_to(root).as_posix()
            if name in stdlib:
                problems.append(f"{where} shadows the standard-library module {name!r} for scripts in "
                                f"{folder.relative_to(root).as_posix()}/")
            elif name in installed:
                problems.append(f"{where} shadows {name!r} of the installed distribution(s) "
                                f"{', '.join(sorted(set(installed[name])))} for scripts in "
                                f"{folder.relative_to(root).as_posix()}/")
    return problems


# --- 3. dependency direction ----------------------------------------------------------------------

def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    caught = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(t is None or (isinstance(t, ast.Name) and t.id in ("ImportError", "ModuleNotFoundError",
                                                                 "Exception", "BaseException")) for t in caught)


def imported_modules(path: Path, module: str | None = None, is_package: bool = False):
    """(line, module name, statement, required) for every import in ``path``, in functions too, and for
    ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name. Relative imports are
    resolved against ``module`` (the file's dotted name); without one they come back with leading dots.
    ``from a import b`` yields both ``a`` and ``a.b`` (``b`` may be a submodule). ``required`` is False
    for a dynamic import (it may load code from elsewhere at run time, e.g. a user's checkout) and for an
    import inside a ``try`` that handles ImportError (an optional dependency)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if is_package else (module.rpartition(".")[0] if module else None)
    optional = {id(inner) for node in ast.walk(tree)
                if isinstance(node, ast.Try) and any(_catches_import_error(h) for h in node.handlers)
                for statement in node.body for inner in ast.walk(statement)}
    for node in ast.walk(tree):
        required = id(node) not in optional
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, f"import {alias.name}", required
        elif isinstance(node, ast.ImportFrom):
            names = ", ".join(alias.name for alias in node.names)
            statement = f"from {'.' * node.level}{node.module or ''} import {names}"
            if node.level and package is not None:
                parts = package.split(".")
                base_parts = parts[:len(parts) - node.level + 1] if node.level <= len(parts) else []
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = "." * node.level + (node.module or "")
            if node.module:
                yield node.lineno, base, statement, required
            separator = "" if not base or base.endswith(".") else "."
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, base + separator + alias.name, statement, required
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if called in ("import_module", "__import__"):
                yield node.lineno, node.args[0].value, f"{called}({node.args[0].value!r})", False


def library_direction_problems(root: Path) -> list[str]:
    """Neither stage subpackage imports the other; the rest of the library (the shared core: backbone,
    reid, data, config, io, run_control, __init__) imports neither; the library never imports a script
    folder or a generic top-level name."""
    problems = []
    library = root / LIBRARY
    script_names = {folder.relative_to(root).parts[0] for folder in script_folders(root) if folder != root}
    for path in sorted(library.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_package else parts)
        own_stage = next((s for s in STAGES if _is_under(module, f"{LIBRARY}.{s}")), None)
        forbidden = [f"{LIBRARY}.{s}" for s in STAGES if s != own_stage]
        for line, name, statement, _ in imported_modules(path, module, is_package):
            where = f"{path.relative_to(root).as_posix()}:{line}"
            hit = next((f for f in forbidden if _is_under(name, f)), None)
            if hit:
                part = f"stage {LIBRARY}.{own_stage}" if own_stage else "the shared core"
                problems.append(f"{where}: {part} imports {hit} ({statement})")
            top = name.split(".")[0]
            if top in GENERIC_NAMES or top in script_names:
                problems.append(f"{where}: the library imports the non-installed top-level {top!r} ({statement})")
    return list(dict.fromkeys(problems))


def script_import_problems(root: Path, stdlib=None, installed=None) -> list[str]:
    """Scripts import only ``soliderkit``, the standard library and third-party packages: no script
    module (of any script folder), no script folder, no generic name, no relative import; and a plain
    import (not optional, not dynamic) must name an installed package."""
    stdlib = sys.stdlib_module_names if stdlib is None else stdlib
    installed = importlib.metadata.packages_distributions() if installed is None else installed
    folders = script_folders(root)
    script_modules = {}  # name -> the files of that name, in every script folder
    for folder in folders:
        for name, path in modules_in(folder).items():
            script_modules.setdefault(name, []).append(path)
    folder_names = {folder.relative_to(root).parts[0] for folder in folders if folder != root}
    problems = []
    for folder in folders:
        for path in sorted(folder.glob("*.py")):
            for line, name, statement, required in imported_modules(path):
                where = f"{path.relative_to(root).as_posix()}:{line}"
                top = name.split(".")[0]
                if name.startswith("."):
                    problems.append(f"{where}: relative import in a script ({statement})")
                elif top == LIBRARY or top in stdlib:
                    continue
                elif top in script_modules:
                    target = next((p for p in script_modules[top] if p.parent == folder), script_modules[top][0])
                    problems.append(f"{where}: imports the script module {target.relative_to(root).as_posix()} "
                                    f"({statement})")
                elif top in GENERIC_NAMES or top in folder_names:
                    problems.append(f"{where}: imports the script folder / generic name {top!r} ({statement})")
                elif required and top not in installed:
                    problems.append(f"{where}: imports {top!r}, which is neither {LIBRARY}, the standard "
                                    f"library nor an installed package ({statement})")
    return list(dict.fromkeys(problems))  # one line per statement, not per imported name


def _report(problems: list[str]) -> str:
    return "\n".join(["", *problems])


# --- the rules on this repository -----------------------------------------------------------------

def test_pyproject_packages_only_soliderkit():
    problems = packaged_top_level_problems(ROOT)
    assert not problems, _report(problems)


def test_installed_distribution_has_one_top_level_package():
    # Look in site-packages only: importlib.metadata.distribution() would also find the build's
    # solider_reid_toolkit.egg-info in the repository root (on sys.path under pytest), which lists sources.
    site = list(dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib")))
    installed = list(importlib.metadata.Distribution.discover(name=DISTRIBUTION, path=site))
    assert len(installed) == 1, f"{DISTRIBUTION} installed {len(installed)} times in {site}"
    problems = installed_top_level_problems(installed[0])
    assert not problems, _report(problems)


def test_generic_names_are_not_importable_outside_the_repository(tmp_path):
    found = importable_outside([LIBRARY, *GENERIC_NAMES], cwd=tmp_path)
    assert found[LIBRARY], "soliderkit itself is not importable: the check below would prove nothing"
    importable = [name for name in GENERIC_NAMES if found[name]]
    assert not importable, f"importable from outside the repository with {sys.executable}: {importable}"


def test_no_module_beside_a_script_shadows_stdlib_or_an_installed_package():
    folders = {f.relative_to(ROOT).as_posix() for f in script_folders(ROOT)}
    assert {"pretrain", "finetune", "data_shards", "bench"} <= folders, folders
    problems = shadowing_problems(ROOT)
    assert not problems, _report(problems)


def test_library_dependency_direction():
    problems = library_direction_problems(ROOT)
    assert not problems, _report(problems)


def test_scripts_import_only_soliderkit_stdlib_and_third_party():
    problems = script_import_problems(ROOT)
    assert not problems, _report(problems)


# --- each rule catches a planted violation ---------------------------------------------------------

def _tree(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


PYPROJECT = """
[project]
name = "fake"
version = "0"
[tool.setuptools.packages.find]
include = [{include}]
"""


def test_packaging_check_catches_a_generic_package(tmp_path):
    clean = _tree(tmp_path / "clean", {"pyproject.toml": PYPROJECT.format(include='"soliderkit*"'),
                                       "soliderkit/__init__.py": "", "soliderkit/reid/__init__.py": "",
                                       "common/__init__.py": "", "finetune/run.py": ""})
    assert packaged_top_level_problems(clean) == []
    wide = _tree(tmp_path / "wide", {"pyproject.toml": PYPROJECT.format(include='"*"'),
                                     "soliderkit/__init__.py": "", "common/__init__.py": ""})
    assert [p for p in packaged_top_level_problems(wide) if "'common'" in p]
    # "soliderkit*" also matches a sibling top-level package such as soliderkit_extras.
    sibling = _tree(tmp_path / "sibling", {"pyproject.toml": PYPROJECT.format(include='"soliderkit*"'),
                                           "soliderkit/__init__.py": "", "soliderkit_extras/__init__.py": ""})
    assert [p for p in packaged_top_level_problems(sibling) if "'soliderkit_extras'" in p]
    modules = _tree(tmp_path / "modules", {"pyproject.toml": PYPROJECT.format(include='"soliderkit*"')
                                           + '[tool.setuptools]\npy-modules = ["helpers"]\n',
                                           "soliderkit/__init__.py": ""})
    assert [p for p in packaged_top_level_problems(modules) if "'helpers'" in p]


def test_installed_check_catches_extra_top_levels_and_path_entries(tmp_path):
    site = tmp_path / "site"
    info = site / "fake-0.dist-info"
    _tree(site, {
        "fake-0.dist-info/METADATA": "Metadata-Version: 2.1\nName: fake\nVersion: 0\n",
        "fake-0.dist-info/top_level.txt": "soliderkit\n",
        "fake-0.dist-info/RECORD": "soliderkit/__init__.py,,\ncommon/__init__.py,,\nhelpers.py,,\n"
                                   "__editable___fake_0_finder.py,,\nlegacy.pth,,\nfake-0.dist-info/RECORD,,\n",
        "__editable___fake_0_finder.py": "MAPPING: dict[str, str] = {'soliderkit': '/src/soliderkit', "
                                         "'finetune': '/src/finetune'}\nNAMESPACES = {}\n",
        "legacy.pth": "import something; something.install()\n/src\n",
    })
    problems = installed_top_level_problems(importlib.metadata.PathDistribution(info))
    for expected in ("'common'", "'helpers'", "'finetune'", "adds '/src' to sys.path"):
        assert [p for p in problems if expected in p], (expected, problems)
    assert not [p for p in problems if "__editable__" in p or "'soliderkit'" in p]


def test_import_check_catches_an_importable_generic_name(tmp_path):
    fake = _tree(tmp_path / "repo", {"finetune/__init__.py": ""})
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    assert importable_outside(["finetune", "common"], cwd=outside, extra_path=str(fake)) == \
        {"finetune": True, "common": False}


def test_shadowing_check_names_the_file_and_what_it_shadows(tmp_path):
    root = _tree(tmp_path, {"finetune/run.py": "", "finetune/datasets.py": "",
                            "data_shards/inspect.py": "", "bench/tools/__init__.py": "",
                            "bench/bench_x.py": "", "setup.py": "", "tests/json.py": "",
                            "soliderkit/io.py": "", ".venv/pyvenv.cfg": "", ".venv/lib/typing.py": ""})
    problems = shadowing_problems(root, installed={"datasets": ["datasets"], "tools": ["some-dist"]})
    assert sorted(problems) == [
        "bench/tools shadows 'tools' of the installed distribution(s) some-dist for scripts in bench/",
        "data_shards/inspect.py shadows the standard-library module 'inspect' for scripts in data_shards/",
        "finetune/datasets.py shadows 'datasets' of the installed distribution(s) datasets for scripts in finetune/",
    ], problems
    # The repository root is a script folder when it holds a .py file.
    assert sorted(shadowing_problems(root, installed={"setup": ["x"]})) == [
        "data_shards/inspect.py shadows the standard-library module 'inspect' for scripts in data_shards/",
        "setup.py shadows 'setup' of the installed distribution(s) x for scripts in ./"]


def test_library_direction_check_catches_stage_and_core_imports(tmp_path):
    root = _tree(tmp_path, {
        "soliderkit/__init__.py": "",
        "soliderkit/io.py": "import json\n",
        "soliderkit/pretrain/__init__.py": "",
        "soliderkit/pretrain/knn.py": "from soliderkit.reid import metrics\nfrom .multicrop import views\n",
        "soliderkit/pretrain/multicrop.py": "def f():\n    from ..finetune import model\n",
        "soliderkit/finetune/__init__.py": "",
        "soliderkit/finetune/model.py": "import importlib\nm = importlib.import_module('soliderkit.pretrain.dino')\n",
        "soliderkit/reid/__init__.py": "from soliderkit import finetune\n",
        "soliderkit/reid/metrics.py": "import soliderkit.pretrain.knn as knn\n",
        "soliderkit/config.py": "from finetune.run import main\n",
        "finetune/run.py": "",
    })
    problems = library_direction_problems(root)
    expected = [
        "soliderkit/config.py:1: the library imports the non-installed top-level 'finetune' "
        "(from finetune.run import main)",
        "soliderkit/finetune/model.py:2: stage soliderkit.finetune imports soliderkit.pretrain "
        "(import_module('soliderkit.pretrain.dino'))",
        "soliderkit/pretrain/multicrop.py:2: stage soliderkit.pretrain imports soliderkit.finetune "
        "(from ..finetune import model)",
        "soliderkit/reid/__init__.py:1: the shared core imports soliderkit.finetune (from soliderkit import finetune)",
        "soliderkit/reid/metrics.py:1: the shared core imports soliderkit.pretrain (import soliderkit.pretrain.knn)",
    ]
    assert sorted(problems) == expected, problems


def test_script_import_check_catches_scripts_importing_each_other(tmp_path):
    root = _tree(tmp_path, {
        "finetune/run.py": "import json\nimport torch\nfrom soliderkit.reid import metrics\n",
        "finetune/evaluate.py": "def main():\n    from run import train\n",
        "pretrain/run.py": "from finetune.run import main\n",
        "data_shards/synth.py": "from . import build_shards\n",
        "data_shards/build_shards.py": "import common.utils\n",
        "bench/bench_a.py": "import reference_eval\nimport backbone\n",
        "bench/reference_eval.py": "import not_installed_anywhere\n",
        "bench/optional.py": """
            import importlib
            try:
                import maybe_missing
            except ImportError:
                maybe_missing = None
            config = importlib.import_module("config")  # e.g. from a user's checkout put on sys.path
            run = importlib.import_module("finetune.run")
            """,
    })
    problems = script_import_problems(root, installed={"torch": ["torch"]})
    expected = [
        "bench/bench_a.py:1: imports the script module bench/reference_eval.py (import reference_eval)",
        "bench/bench_a.py:2: imports the script folder / generic name 'backbone' (import backbone)",
        "bench/optional.py:8: imports the script folder / generic name 'finetune' (import_module('finetune.run'))",
        "bench/reference_eval.py:1: imports 'not_installed_anywhere', which is neither soliderkit, the standard "
        "library nor an installed package (import not_installed_anywhere)",
        "data_shards/build_shards.py:1: imports the script folder / generic name 'common' (import common.utils)",
        "data_shards/synth.py:1: relative import in a script (from . import build_shards)",
        "finetune/evaluate.py:2: imports the script module finetune/run.py (from run import train)",
        "pretrain/run.py:1: imports the script folder / generic name 'finetune' (from finetune.run import main)",
    ]
    assert sorted(problems) == expected, problems
