"""eva_core declares exactly what it imports, and a clean offline install of it works outside the repo.

Two guarantees:

* ``eva_core/pyproject.toml``'s ``dependencies`` are the third-party distributions eva_core imports
  at module top level (plus the documented on-use core ones); every import made only on use (inside
  a function, or guarded by ``try``/``if`` at module level) belongs to a core dependency or an
  extra; nothing is declared that nothing imports.
* ``pip install --no-index -e eva_core`` into a fresh virtualenv, which sees the repository
  venv's third-party packages but not its eva_core, resolves every declared dependency without
  downloading, and from a directory outside the repository ``import eva_core`` builds a model that
  runs a forward pass.
"""
from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROJECT = REPO / "eva_core"
PACKAGE = PROJECT / "eva_core"

# Core dependencies that eva_core imports only on use, on core paths. safetensors: the checkpoint
# reader and writer (eva_core.checkpoint.io) import it for `.safetensors` paths, a core format.
# hydra-core: LazyConfig.apply_overrides parses every command-line `key=value` with its grammar.
CORE_IMPORTED_ON_USE = {"safetensors", "hydra-core"}

EXPECTED_EXTRAS = {"deepspeed", "clip", "detection", "video", "webdataset", "xformers", "all"}


def normalize(name: str) -> str:
    """PEP 503 normalised distribution name (``Open_Clip.torch`` -> ``open-clip-torch``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """The distribution name of a PEP 508 requirement string, normalised."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return normalize(match.group(1))


def _imported_modules(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name.split(".")[0] for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module.split(".")[0]]
    return []


def scan_third_party_imports(package_dir: Path, own_name: str) -> tuple[dict, dict]:
    """Third-party modules imported by the ``.py`` files under ``package_dir``.

    Returns:
        ``(top_level, on_use)``: each maps a top-level module name to the files importing it.
        ``top_level`` holds imports that run whenever the module is imported (direct statements of
        the module body); ``on_use`` holds the others (inside functions or classes, or guarded by a
        module-level ``try``/``if``) that ``top_level`` does not already have.
    """
    skip = set(sys.stdlib_module_names) | {own_name, "__future__"}
    top_level: dict[str, set[str]] = {}
    anywhere: dict[str, set[str]] = {}
    for path in sorted(package_dir.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        rel = str(path.relative_to(package_dir.parent))
        for node in tree.body:
            for module in _imported_modules(node):
                if module not in skip:
                    top_level.setdefault(module, set()).add(rel)
        for node in ast.walk(tree):
            for module in _imported_modules(node):
                if module not in skip:
                    anywhere.setdefault(module, set()).add(rel)
    on_use = {m: files for m, files in anywhere.items() if m not in top_level}
    return top_level, on_use


def distribution_of(module: str, module_to_dists: dict[str, list[str]]) -> str | None:
    """The installed distribution that provides ``module`` (``PIL`` -> ``pillow``), or None."""
    dists = module_to_dists.get(module)
    return normalize(dists[0]) if dists else None


def read_declared(pyproject: Path) -> tuple[set[str], dict[str, set[str]]]:
    """``(core, extras)`` distribution names declared by a pyproject.toml.

    A self-referencing extra (``eva_core[a,b]``) is expanded into the extras it names.
    """
    project = tomllib.loads(pyproject.read_text())["project"]
    own = normalize(project["name"])
    core = {requirement_name(r) for r in project.get("dependencies", [])}
    raw = project.get("optional-dependencies", {})
    extras: dict[str, set[str]] = {}
    for extra, requirements in raw.items():
        names: set[str] = set()
        for r in requirements:
            if requirement_name(r) == own:
                for included in re.search(r"\[(.*)\]", r).group(1).split(","):
                    names |= {requirement_name(x) for x in raw[included.strip()]}
            else:
                names.add(requirement_name(r))
        extras[extra] = names
    return core, extras


def dependency_problems(package_dir: Path, pyproject: Path, core_on_use: set[str] = frozenset(),
                        module_to_dists: dict[str, list[str]] | None = None) -> list[str]:
    """Every mismatch between what ``package_dir`` imports and what ``pyproject`` declares.

    Args:
        package_dir: the import package (its directory name is the package's own name).
        pyproject: the project file declaring ``dependencies`` and ``optional-dependencies``.
        core_on_use: distributions declared as core although they are imported only on use.
        module_to_dists: module -> distributions map (default: the running interpreter's).

    Returns:
        One readable line per problem; empty when the declaration is exact.
    """
    module_to_dists = module_to_dists or importlib.metadata.packages_distributions()
    top_level, on_use = scan_third_party_imports(package_dir, package_dir.name)
    core, extras = read_declared(pyproject)
    optional = set().union(*extras.values()) if extras else set()
    problems = []
    for module, files in sorted(top_level.items()):
        dist = distribution_of(module, module_to_dists)
        if dist is None:
            problems.append(f"{package_dir.name}: module-top import {module!r} (in {sorted(files)}) is not "
                            "installed: no distribution provides it")
        elif dist not in core:
            problems.append(f"{pyproject}: module-top import {module!r} (distribution {dist!r}, in "
                            f"{sorted(files)}) is not in [project] dependencies {sorted(core)}")
    for module, files in sorted(on_use.items()):
        # an optional package need not be installed here (xformers is GPU only); then the
        # distribution is expected to carry the module's name
        dist = distribution_of(module, module_to_dists) or normalize(module)
        if dist not in core | optional:
            problems.append(f"{pyproject}: on-use import {module!r} (distribution {dist!r}, in "
                            f"{sorted(files)}) is neither a dependency nor in an extra")
    imported_at_top = {distribution_of(m, module_to_dists) for m in top_level}
    for dist in sorted(core - imported_at_top - set(core_on_use)):
        problems.append(f"{pyproject}: dependency {dist!r} is declared but no module of "
                        f"{package_dir.name} imports it at top level")
    return problems


def test_declared_dependencies_are_exactly_what_eva_core_imports():
    assert dependency_problems(PACKAGE, PROJECT / "pyproject.toml", CORE_IMPORTED_ON_USE) == []


def test_extras_name_the_optional_parts_and_all_includes_every_extra():
    core, extras = read_declared(PROJECT / "pyproject.toml")
    assert set(extras) == EXPECTED_EXTRAS
    assert extras["clip"] == {"open-clip-torch"}
    assert extras["detection"] == {"lvis", "pycocotools"}
    assert extras["video"] == {"av", "decord"}
    assert extras["webdataset"] == {"webdataset", "braceexpand"}
    assert extras["all"] == set().union(*(v for k, v in extras.items() if k != "all"))
    assert not core & extras["all"], "a core dependency is repeated in an extra"


def _write_fake_project(root: Path, dependencies: list[str], sources: dict[str, str]) -> Path:
    pkg = root / "fakepkg"
    pkg.mkdir(parents=True)
    for name, text in sources.items():
        (pkg / name).write_text(textwrap.dedent(text))
    pyproject = root / "pyproject.toml"
    deps = ", ".join(json.dumps(d) for d in dependencies)
    pyproject.write_text(f'[project]\nname = "fakepkg"\nversion = "0"\ndependencies = [{deps}]\n'
                         '[project.optional-dependencies]\nvideo = ["av"]\n')
    return pkg


def test_dependency_check_names_an_undeclared_top_level_import(tmp_path):
    pkg = _write_fake_project(tmp_path, ["numpy", "omegaconf"], {
        "__init__.py": "import numpy\nfrom fvcore.common import param_scheduler\n",
        "video.py": "def read():\n    import av\n    return av\n",
    })
    modules = {"numpy": ["numpy"], "fvcore": ["fvcore"], "omegaconf": ["omegaconf"], "av": ["av"]}
    problems = dependency_problems(pkg, tmp_path / "pyproject.toml", module_to_dists=modules)
    assert len(problems) == 2, problems
    assert "module-top import 'fvcore'" in problems[0] and "fakepkg/__init__.py" in problems[0]
    assert "dependency 'omegaconf' is declared but no module" in problems[1]


def test_dependency_check_names_an_on_use_import_missing_from_every_extra(tmp_path):
    pkg = _write_fake_project(tmp_path, ["numpy"], {
        "__init__.py": "import numpy\n",
        "ann.py": "try:\n    import lvis\nexcept ImportError:\n    lvis = None\n",
    })
    modules = {"numpy": ["numpy"], "lvis": ["lvis"], "av": ["av"]}
    problems = dependency_problems(pkg, tmp_path / "pyproject.toml", module_to_dists=modules)
    assert len(problems) == 1, problems
    assert "on-use import 'lvis'" in problems[0] and "fakepkg/ann.py" in problems[0]


# ---------------------------------------------------------------- a real install, offline

def _clean_env(**extra: str) -> dict[str, str]:
    # The machine's pip config adds local wheel folders; ignore it so only what is installed counts.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "PYTHONPATH"}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PYTHONNOUSERSITE="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **extra)
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    """A new virtualenv that sees the repository venv's third-party packages, but not its eva_core.

    The base interpreter creates it (a venv made from a venv does not see the parent's packages);
    a ``.pth`` file adds a folder of links to every entry of the repository venv's site-packages
    except eva_core's own metadata and editable-install hooks, so pip finds torch & co. installed
    and must resolve eva_core itself from scratch.
    """
    root = tmp_path_factory.mktemp("pkg")
    venv = root / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     root, _clean_env()).stdout.strip())
    shared = root / "shared-site-packages"
    shared.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        name = entry.name.lower()
        if name.startswith(("eva_core", "__editable__")) or name.endswith(".pth"):
            continue
        (shared / entry.name).symlink_to(entry)
    (site / "repo_venv_packages.pth").write_text(f"{shared}\n")
    return root, python


def test_offline_pip_in_the_fresh_venv_refuses_an_unsatisfied_dependency(fresh_venv):
    root, python = fresh_venv
    project = root / "needs-missing"
    _write_fake_project(project, ["numpy", "eva-no-such-distribution"], {"__init__.py": "import numpy\n"})
    result = _run([str(python), "-m", "pip", "install", "--no-index", "--no-build-isolation", "--dry-run",
                   str(project)], root, _clean_env())
    assert result.returncode != 0
    assert "eva-no-such-distribution" in result.stdout + result.stderr


def test_editable_install_resolves_offline_and_builds_a_model_outside_the_repo(fresh_venv):
    root, python = fresh_venv
    env = _clean_env()
    install = _run([str(python), "-m", "pip", "install", "--no-index", "--no-build-isolation", "-e",
                    str(PROJECT)], root, env)
    assert install.returncode == 0, install.stdout + install.stderr
    # pip resolved each declared dependency against what is installed (nothing was downloaded)
    core, _ = read_declared(PROJECT / "pyproject.toml")
    satisfied = {requirement_name(line.split(":", 1)[1]) for line in install.stdout.splitlines()
                 if line.startswith("Requirement already satisfied:") and "(from eva_core" in line}
    assert core <= satisfied, install.stdout

    outside = root / "elsewhere"
    outside.mkdir()
    script = textwrap.dedent("""
        import importlib.metadata, json, os, sys
        import torch
        import eva_core
        name = "eva_tiny_patch16_224"
        assert name in eva_core.list_models(), eva_core.list_models()
        torch.manual_seed(0)
        model = eva_core.create_model(name, num_classes=5).eval()
        with torch.no_grad():
            logits = model(torch.randn(2, 3, 224, 224))
        dist = importlib.metadata.distribution("eva_core")
        print(json.dumps({
            "module_file": eva_core.__file__,
            "metadata_dir": str(dist.locate_file("")),
            "requires": dist.requires,
            "shape": list(logits.shape),
            "finite": bool(torch.isfinite(logits).all()),
            "cwd": os.getcwd(),
        }))
    """)
    run = _run([str(python), "-c", script], outside, env)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(report["module_file"]).resolve() == (PACKAGE / "__init__.py").resolve()
    assert Path(report["metadata_dir"]).resolve().is_relative_to(root.resolve())
    assert Path(report["cwd"]).resolve() == outside.resolve()
    assert report["shape"] == [2, 5] and report["finite"]
    installed_core = {requirement_name(r) for r in report["requires"] if "extra ==" not in r}
    assert installed_core == core
