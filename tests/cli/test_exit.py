"""How the `lorareg` process ends: without tearing the interpreter down (cli/main.py `_leave`),
yet with the same exit status, every line flushed, the atexit handlers run, and a thread that
is still working waited for."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import atexit, sys, threading, time
from pathlib import Path

out = Path(sys.argv[1])
atexit.register(lambda: (out / "atexit").write_text("ran"))


class Teardown:  # its __del__ runs when the interpreter frees module globals
    def __del__(self, write=Path.write_text, path=out / "teardown"):
        write(path, "ran")


kept = Teardown()
if sys.argv[2] == "thread":
    def late():
        time.sleep(0.5)
        (out / "thread").write_text("done")
    threading.Thread(target=late).start()
sys.argv = ["lorareg", *sys.argv[3:]]
from lorareg.cli.main import main
main()
"""


def _run(tmp_path, mode: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), mode, *args], capture_output=True,
                          text=True, timeout=120, env={"LORAREG_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"})


def test_success_flushes_output_and_runs_atexit_handlers(tmp_path):
    res = _run(tmp_path, "-", "--version")
    assert res.returncode == 0, res.stderr
    assert "version" in res.stdout
    assert (tmp_path / "atexit").read_text() == "ran"
    assert not (tmp_path / "teardown").exists()  # the interpreter was not torn down


def test_an_error_keeps_its_status_and_message(tmp_path):
    res = _run(tmp_path, "-", "show", "nothing")
    assert res.returncode == 1
    assert res.stderr.startswith("Error: unknown reference 'nothing'")
    assert "Traceback" not in res.stderr
    assert (tmp_path / "atexit").read_text() == "ran"


def test_a_usage_error_exits_2(tmp_path):
    res = _run(tmp_path, "-", "lss")
    assert res.returncode == 2
    assert "Did you mean 'ls'?" in res.stderr


def test_a_thread_still_working_is_waited_for(tmp_path):
    res = _run(tmp_path, "thread", "--version")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "thread").read_text() == "done"
    assert (tmp_path / "atexit").read_text() == "ran"
