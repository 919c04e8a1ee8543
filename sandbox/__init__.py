"""Sandbox: a local fake of the NXCloud HTTP APIs (api2, Callbot v3, Agent) for tests and demos.

A top-level package of the repo, like config/ and workers/: never in the nxjobs wheel, so no
producer installs it. It imports nxjobs (the signing code), never the other way round.
Start it with `python -m sandbox` from the repo root.

Modules: accounts (fake credentials, worker env), state (config, storage, quotas,
counters), handlers (request -> response logic), server (HTTP, CLI `run`),
control (client for /_sandbox/*). Names below are imported lazily so
`python -m sandbox.server` does not import the server module twice.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "start_in_thread": "server",
    "SandboxHandle": "server",
    "run": "server",
    "SandboxConfig": "state",
    "SandboxState": "state",
    "SandboxControl": "control",
    "sandbox_env": "accounts",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
