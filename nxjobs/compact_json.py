"""Compact JSON text: how every record field, script argument and stored entry is written.

No spaces, UTF-8 kept (phones and names stay readable in Redis), encoded by pydantic-core.
"""

from __future__ import annotations

from typing import Any

from pydantic_core import to_json


def dumps(value: Any) -> str:
    return to_json(value).decode("utf-8")
