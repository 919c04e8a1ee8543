"""Where kombu's Redis transport keeps a queue's messages, from the app's transport options.

It keeps one list per priority step (`kombu.transport.redis.Channel._q_for_pri`): `<queue>` for
the lowest step, `<queue>` + `Channel.sep` + step for the others, every key under the options'
`global_keyprefix`; messages delivered but not acknowledged sit in the `unacked_key` hash.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kombu.transport.redis import Channel


def queue_lists(queue: str, transport_options: Mapping[str, Any] | None = None) -> list[str]:
    """The Redis lists holding `queue`'s waiting messages, one per priority step."""
    options = transport_options or {}
    prefix = options.get("global_keyprefix", "")
    steps = sorted(set(options.get("priority_steps", Channel.priority_steps)))
    # Channel.priority maps every priority to a step; the lowest step is the bare queue name.
    return [prefix + (f"{queue}{Channel.sep}{step}" if step else queue) for step in steps]


def unacked_key(transport_options: Mapping[str, Any] | None = None) -> str:
    """The hash of messages delivered to a worker and not yet acknowledged."""
    options = transport_options or {}
    return str(options.get("global_keyprefix", "")) + str(
        options.get("unacked_key", Channel.unacked_key)
    )
