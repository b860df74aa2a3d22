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


# What a command that reads the registry never loads: the merge engine's stack, the schema
# upgrader while the schema is current, the optional extras (object store, web view), and rich
# while the output is piped.  Each is start-up time a user waits for on every command.
NOT_FOR_READING = ("torch", "transformers", "peft", "safetensors", "numpy", "huggingface_hub", "alembic", "boto3",
                   "botocore", "starlette", "uvicorn", "jinja2", "rich", "lorareg.merge.engine", "lorareg.cli.web")
DATABASE_LAYER = ("sqlalchemy", "sqlmodel", "pydantic", "lorareg.registry.models")


def run_cli(args: list[str], home: Path) -> tuple[str, set[str]]:
    """A command run in a fresh interpreter, as a user runs it: what it printed, and every
    module it had loaded when it finished."""
    code = ("import sys; from lorareg.cli.main import cli\n"
            "cli(sys.argv[1:], prog_name='lorareg', standalone_mode=False)\n"
            "print('\\nmodules:', *sorted(sys.modules))")
    env = {"LORAREG_HOME": str(home), "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    out, _, modules = run.stdout.rpartition("\nmodules: ")
    return out, set(modules.split())


@pytest.mark.parametrize("args", [["--help"], ["--version"]])
def test_help_and_version_load_no_database_layer(args, tmp_path):
    out, modules = run_cli(args, tmp_path / "h")
    assert "lorareg" in out
    assert modules.isdisjoint(NOT_FOR_READING + DATABASE_LAYER), modules & set(NOT_FOR_READING + DATABASE_LAYER)


@pytest.mark.parametrize("args, shows", [
    (["ls"], "chat@1"),
    (["show", "chat"], "llama@1"),  # an adapter names its base
    (["show", "llama@1"], "LlamaForCausalLM"),
    (["log", "-n", "5"], "chat@1"),
    (["export", "llama", "{out}"], "llama@1"),
])
def test_reading_commands_load_only_what_they_use(args, shows, seeded, lorareg_home, tmp_path):
    out_dir = tmp_path / "exported"
    out, modules = run_cli([a.format(out=out_dir) for a in args], lorareg_home)
    assert shows in out
    if args[0] == "export":
        assert (out_dir / "config.json").is_file() and (out_dir / "model.safetensors").is_file()
    assert modules.isdisjoint(NOT_FOR_READING), sorted(modules & set(NOT_FOR_READING))


def test_a_new_registry_is_created_through_alembic(tmp_path):
    """The other side of the guard above: without a current schema the upgrader does load."""
    _, modules = run_cli(["ls"], tmp_path / "new")
    assert "alembic" in modules


def test_the_database_layer_is_loaded_once_and_left_out_of_collections(tmp_path):
    code = ("import gc; from lorareg.cli.main import cli\n"
            "cli(['ls'], standalone_mode=False); frozen = gc.get_freeze_count()\n"
            "cli(['ls'], standalone_mode=False)\n"
            "print('\\nfrozen:', frozen, gc.get_freeze_count(), gc.isenabled())")
    env = {"LORAREG_HOME": str(tmp_path / "h"), "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    first, second, enabled = run.stdout.rpartition("frozen: ")[2].split()
    assert int(first) > 20_000  # SQLAlchemy, SQLModel and the tables
    assert int(second) <= int(first)  # a second command in the same process freezes nothing more
    assert enabled == "True"


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
