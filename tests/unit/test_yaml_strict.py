"""Every YAML file of the repo parses with a strict loader (ruamel.yaml: a duplicate mapping key is
an error, as in Compose v2; PyYAML and Debian's Compose v1 keep the last one silently), through
scripts/check_yaml.py, the same check `make check-compose` runs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml.constructor import DuplicateKeyError

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check_yaml.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("check_yaml", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


check_yaml = _load_script()


def repo_yaml() -> list[Path]:
    files = check_yaml.repo_yaml_files(ROOT)
    # git ls-files '*.yml' '*.yaml' (tracked and new ones) found the compose file at least
    assert ROOT / "docker-compose.yml" in files
    return files


@pytest.mark.parametrize("path", repo_yaml(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_file_of_the_repo_parses_strictly(path):
    docs = check_yaml.load_strict(path.read_text(encoding="utf-8"))
    assert docs, f"{path} is empty"


def test_the_check_script_passes_on_the_repo_as_make_runs_it():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--repo", "docker-compose.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


DUPLICATE = """\
services:
  flower:
    image: nxjobs:latest
    environment: {A: "1"}
    command: ["x"]
    environment:
      B: "2"
"""


def test_a_duplicate_key_is_rejected():
    # PyYAML would silently keep the second `environment`; the strict loader refuses it
    import yaml

    assert yaml.safe_load(DUPLICATE)["services"]["flower"]["environment"] == {"B": "2"}
    with pytest.raises(DuplicateKeyError, match="environment"):
        check_yaml.load_strict(DUPLICATE)
    # also in a later document of a multi-document file
    with pytest.raises(DuplicateKeyError):
        check_yaml.load_strict("a: 1\n---\nb: 1\nb: 2\n")


def test_the_check_script_fails_on_a_duplicate_key_and_names_it(tmp_path):
    bad = tmp_path / "compose.yml"
    bad.write_text(DUPLICATE)
    good = tmp_path / "ok.yaml"
    good.write_text("a: 1\n")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(good), str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert f"{bad}:6:5" in proc.stderr and 'duplicate key "environment"' in proc.stderr
    assert str(good) not in proc.stderr


def test_merge_keys_overriding_an_anchor_are_not_duplicates():
    # compose's idiom (`<<: *anchor` then a key of the anchor again) stays valid
    docs = check_yaml.load_strict("x: &base {A: '1', B: '2'}\ny:\n  <<: *base\n  B: '3'\n")
    assert docs[0]["y"] == {"A": "1", "B": "3"}


def test_required_variables_come_from_values_not_comments():
    text = (
        "# ${COMMENTED:?no}\na: ${ONE:?set it}\nb: [\"${TWO:?x}-${THREE:-d}\", '${ONE:?again}']\n"
    )
    assert check_yaml.required_variables(text) == ["ONE", "TWO"]
