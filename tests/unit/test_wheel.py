"""What the built wheel holds: nxjobs/ (every subpackage and Redis script in the source tree),
the `nxjobs` console script, and nothing of the repo's own packages or the sandbox's fake
credentials. Built once, offline (no build isolation, no index), from a copy of the tree."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sandbox import accounts

ROOT = Path(__file__).resolve().parents[2]
# The repo's own top-level packages and tooling: none of them may ship.
NOT_SHIPPED = ("sandbox", "tests", "tasks", "workers", "config", "bench", "scripts")
FAKE_CREDENTIALS = (
    accounts.API2_ACCESS_KEY,
    accounts.API2_ACCESS_SECRET,
    accounts.API2_APPKEY,
    accounts.CALLBOT_UUID,
    accounts.CALLBOT_SECRET_KEY,
    accounts.AGENT_APPKEY,
    accounts.AGENT_SECRETKEY,
)
IMPORTS_SANDBOX = re.compile(rb"^\s*(from\s+sandbox[\s.]|import\s+sandbox\b)", re.M)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    # A copy: an in-tree build would leave build/ behind, and files a stale build/lib holds would
    # ship.
    src = tmp_path_factory.mktemp("src") / "nxjobs"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "__pycache__",
            "*.egg-info",
            "build",
            "dist",
            ".run",
            ".pytest_cache",
            ".hypothesis",
        ),
    )
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(out),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = out.glob("nxjobs-*.whl")
    with zipfile.ZipFile(built) as zf:
        yield zf


def _source(pattern: str) -> set[str]:
    return {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "nxjobs").rglob(pattern)
        if "__pycache__" not in p.parts
    }


def test_holds_every_module_and_redis_script_of_the_nxjobs_source_tree(wheel):
    names = set(wheel.namelist())
    assert {"nxjobs/__init__.py", "nxjobs/cli.py"} <= names
    missing = (_source("*.py") | _source("*.lua")) - names
    assert not missing, f"in nxjobs/ but not in the wheel: {sorted(missing)}"


def test_holds_nothing_but_nxjobs_and_its_metadata(wheel):
    tops = {name.split("/", 1)[0] for name in wheel.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"nxjobs"}, tops
    assert not [n for n in wheel.namelist() if n.split("/", 1)[0] in NOT_SHIPPED]
    # nor a sandbox nested under nxjobs/ (where it used to be)
    assert not [n for n in wheel.namelist() if "/sandbox/" in n]


def test_no_file_holds_the_sandbox_fake_credentials_or_imports_it(wheel):
    for name in wheel.namelist():
        data = wheel.read(name)
        leaked = [c for c in FAKE_CREDENTIALS if c.encode() in data]
        assert not leaked, f"{name} contains {leaked}"
        assert not IMPORTS_SANDBOX.search(data), f"{name} imports sandbox"


def test_declares_the_nxjobs_console_script(wheel):
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry_points).decode()
    section = text.split("[console_scripts]", 1)[1].split("\n[", 1)[0]
    assert re.search(r"^nxjobs\s*=\s*nxjobs\.cli:main\s*$", section, re.M), text
