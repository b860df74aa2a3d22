"""The wheel installs one import package, `lorareg`, with the alembic scripts inside."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True, text=True)
    (whl,) = out.glob("lorareg-*.whl")
    return whl


def test_only_the_lorareg_package_is_installed(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.startswith("lorareg-")}
    assert top == {"lorareg"}, top
    for bare in ("registry", "cli", "merge", "store", "migrations"):
        assert not any(n.startswith(f"{bare}/") or n == f"{bare}.py" for n in names)


def test_wheel_carries_migrations_and_subpackages(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("lorareg/__init__.py", "lorareg/errors.py", "lorareg/migrations/env.py",
                   "lorareg/migrations/script.py.mako", "lorareg/migrations/versions/0001_initial_schema.py",
                   "lorareg/registry/api.py", "lorareg/store/blobs.py", "lorareg/cli/main.py", "lorareg/merge/engine.py"):
        assert needed in names, needed
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "lorareg = lorareg.cli.main:main" in entry


def test_cli_starts_without_torch():
    code = ("import sys; from lorareg.cli.main import cli\n"
            "try:\n    cli(['--help'], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'transformers' in sys.modules, 'sqlmodel' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False False False"


def test_ls_does_not_import_torch(tmp_path):
    code = ("import sys; from lorareg.cli.main import cli\n"
            "try:\n    cli(['ls'], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    env = {"LORAREG_HOME": str(tmp_path / "h"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_a_command_imports_its_own_module_alone(tmp_path):
    code = ("import sys; from lorareg.cli.main import cli\n"
            "try:\n    cli(['ls'], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith(('lorareg.cli.cmd_', 'lorareg.merge'))))")
    env = {"LORAREG_HOME": str(tmp_path / "h"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip().splitlines()[-1] == "['lorareg.cli.cmd_registry']"


def test_the_command_map_names_every_command_where_it_is_defined():
    import importlib

    from lorareg.cli.main import COMMAND_MODULES

    defined = {c.name: module for module in set(COMMAND_MODULES.values())
               for c in importlib.import_module(f"lorareg.cli.{module}").COMMANDS}
    assert defined == COMMAND_MODULES
