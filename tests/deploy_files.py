"""What the deployment files under deploy/ use, read for the tests: the kustomize renders, the
alert rules and the dashboard's queries, and the metric and label names in each expression."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUSTOMIZE_DIRS = {
    "base": DEPLOY / "kubernetes" / "base",
    "overlay": DEPLOY / "kubernetes" / "overlays" / "example",
}
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "nxjobs-dashboard.json"
RUNBOOK = ROOT / "docs" / "runbook.md"

# Every series the project serves starts with this; a label can never do so.
METRIC = re.compile(r"\bnxjobs_[a-zA-Z0-9_]+\b")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")


def tool(name: str) -> str:
    """The command's path; a missing one skips the test, or fails it in CI (CI=true), where
    `make install` (the Makefile's TOOLS) must have installed it."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed (CI must check, not skip: make install)")
        pytest.skip(f"{name} not installed (make install installs it)")
    return found


def kustomize(name: str) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize` renders for KUSTOMIZE_DIRS[name]."""
    proc = subprocess.run(
        [tool("kubectl"), "kustomize", str(KUSTOMIZE_DIRS[name])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def dashboard_exprs() -> list[str]:
    return [
        target["expr"]
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def all_exprs() -> dict[str, str]:
    """Each PromQL expression of the rules and the dashboard, by where it is."""
    out = {f"alert {rule['alert']}": rule["expr"] for rule in alert_rules()}
    out.update({f"dashboard expr {i}": e for i, e in enumerate(dashboard_exprs())})
    return out


def metric_names(expr: str) -> set[str]:
    return set(METRIC.findall(expr))


def label_names(expr: str) -> set[str]:
    """Labels the expression groups by or matches on."""
    labels = {m for m in MATCHER.findall(expr)}
    for group in GROUPING.findall(expr):
        labels |= {part.strip() for part in group.split(",") if part.strip()}
    return labels
