"""The Agent API token, cached in Redis and shared by every worker.

One token per appkey; the cache entry expires when renewal is due (docs/provider.md
§7.1: renew with 20 % of the lifetime left), so whichever worker next needs it
fetches a new one under a short Redis lock while the others wait for it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from nxjobs import keys, scripts
from nxjobs.client.agent import AgentClient
from nxjobs.client.errors import Action, ProviderError

T = TypeVar("T")

LOCK_TTL_MS = 15_000
WAIT_FOR_OTHER_FETCH_S = 5.0


class AgentTokenCache:
    # `client`: decode_responses=True, so replies are str (redis-py types them bytes | str).
    def __init__(self, client: Any, agent: AgentClient, *, renew_fraction: float = 0.2):
        self.redis = client
        self.agent = agent
        self.renew_fraction = renew_fraction
        self.key = keys.agent_token(agent.appkey)
        self.lock_key = keys.agent_token_lock(agent.appkey)
        self._delete_if_equal = scripts.register(client, "token_delete_if_equal")

    def get(self) -> str:
        token = self.redis.get(self.key)
        if token:
            return token
        owner = uuid.uuid4().hex
        deadline = time.monotonic() + WAIT_FOR_OTHER_FETCH_S
        while not self.redis.set(self.lock_key, owner, nx=True, px=LOCK_TTL_MS):
            # Another worker is fetching: use its token rather than revoke-racing it.
            time.sleep(0.05)
            token = self.redis.get(self.key)
            if token:
                return token
            if time.monotonic() > deadline:
                break  # the holder is stuck or died; fetch ourselves
        try:
            token, lifetime_s = self.agent.fetch_token()
            cache_s = max(1, int(lifetime_s * (1 - self.renew_fraction)))
            self.redis.set(self.key, token, ex=cache_s)
            return token
        finally:
            self._delete_if_equal(keys=[self.lock_key], args=[owner])

    def invalidate(self, token: str) -> None:
        """Drop `token` from the cache unless another worker already replaced it."""
        self._delete_if_equal(keys=[self.key], args=[token])

    def call(self, fn: Callable[[str], T]) -> T:
        """Run `fn(token)`; on a stale-token answer (1000/1201) refresh once and run it again."""
        token = self.get()
        try:
            return fn(token)
        except ProviderError as err:
            if err.classification.action is not Action.REFRESH:
                raise
            self.invalidate(token)
            return fn(self.get())
