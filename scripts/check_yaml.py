#!/usr/bin/env python3
"""Strict YAML check: every file must parse with no duplicate mapping key.

    python scripts/check_yaml.py [FILE ...]      # default: every *.yml / *.yaml of the repo
    python scripts/check_yaml.py --repo FILE ... # the repo's files and these
    python scripts/check_yaml.py --required-env docker-compose.yml

Compose v2 refuses a mapping with a duplicate key; Debian's Compose v1 and PyYAML keep the
last one silently, so `docker-compose config` alone cannot catch it. ruamel.yaml's safe
loader raises DuplicateKeyError instead (a dev dependency: `make install`).

--required-env prints NAME=<dummy> for every `${NAME:?...}` of the file, one per line, so
`make check-compose` can validate the file's structure without real secrets.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PATTERNS = ("*.yml", "*.yaml")
# Never part of the project's own files (walked only when git is not available).
SKIP_DIRS = {
    ".git",
    ".venv",
    "venv",
    "node_modules",
    ".tox",
    ".mypy_cache",
    ".pytest_cache",
    ".hypothesis",
    "build",
    "dist",
    ".run",
}
REQUIRED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?")
CHECK_VALUE = "compose-config-check-only"


def strict_loader():
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe", pure=True)
    yaml.allow_duplicate_keys = False  # the default, stated: duplicates are errors
    return yaml


def load_strict(text: str) -> list[Any]:
    """Every document of `text`; raises ruamel's DuplicateKeyError (or another YAMLError)."""
    return list(strict_loader().load_all(text))


def repo_yaml_files(root: Path = ROOT) -> list[Path]:
    """Tracked and new (not ignored) YAML files; a directory walk when this is no git checkout."""
    try:
        out = subprocess.run(
            [
                "git",
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
                "--",
                *PATTERNS,
            ],
            cwd=root,
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout
        names = sorted({name for name in out.decode().split("\0") if name})
        return [root / name for name in names if (root / name).is_file()]
    except (OSError, subprocess.SubprocessError):
        found = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
            found += [Path(dirpath) / f for f in filenames if f.endswith((".yml", ".yaml"))]
        return sorted(found)


def describe(path: Path, exc: Exception) -> str:
    """`path:line:col: problem`, short: ruamel's message repeats whole (possibly large) values."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if not problem or mark is None:
        return f"{path}: {type(exc).__name__}: {exc}"
    problem = re.sub(r' with value ".*', "", problem, flags=re.S)  # the key's name is enough
    if len(problem) > 200:
        problem = problem[:200] + "..."
    where = f"{path}:{mark.line + 1}:{mark.column + 1}"
    context = getattr(exc, "context_mark", None)
    first = (
        f" (first at line {context.line + 1})"
        if context is not None and "duplicate" in problem
        else ""
    )
    return f"{where}: {type(exc).__name__}: {problem}{first}"


def check_files(paths: Iterable[Path]) -> list[str]:
    """One error line per file that does not parse strictly; empty when all do."""
    errors = []
    for path in paths:
        try:
            load_strict(path.read_text(encoding="utf-8"))
        except Exception as exc:  # a YAMLError, or a file that cannot be read: report each
            errors.append(describe(path, exc))
    return errors


def _strings(node: Any) -> Iterable[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def required_variables(text: str) -> list[str]:
    """Names used as ${NAME:?message} in the file's values (compose fails when they are unset
    or empty), in order of first use. Comments do not count."""
    names = [
        name for doc in load_strict(text) for s in _strings(doc) for name in REQUIRED.findall(s)
    ]
    return list(dict.fromkeys(names))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "files", nargs="*", type=Path, help="default: every *.yml/*.yaml of the repository"
    )
    p.add_argument(
        "--repo", action="store_true", help="check the repository's YAML files as well as FILEs"
    )
    p.add_argument(
        "--required-env",
        metavar="COMPOSE_FILE",
        type=Path,
        help="print NAME=<dummy> for each ${NAME:?} of COMPOSE_FILE and exit",
    )
    args = p.parse_args(argv)
    if args.required_env:
        for name in required_variables(args.required_env.read_text(encoding="utf-8")):
            print(f"{name}={CHECK_VALUE}")
        return 0
    files = list(args.files)
    if args.repo or not files:
        files += repo_yaml_files()
    files = list({path.resolve(): path for path in files}.values())
    if not files:
        print("check_yaml: no YAML files found", file=sys.stderr)
        return 1
    errors = check_files(files)
    for line in errors:
        print(line, file=sys.stderr)
    if errors:
        print(
            f"check_yaml: {len(errors)} of {len(files)} YAML file(s) failed the strict parse "
            "(duplicate keys are errors, as in Compose v2)",
            file=sys.stderr,
        )
        return 1
    print(f"check_yaml: {len(files)} YAML file(s) parse strictly (no duplicate keys)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
