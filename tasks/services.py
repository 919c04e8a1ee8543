"""Per-process resources a task needs, built once from settings on first use.

Celery creates task objects once per worker process, so caching here gives one
HTTP connection pool, one Redis client and one token cache per process.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cached_property

from config.settings import Settings, load_settings
from nxjobs.agent_tokens import AgentTokenCache
from nxjobs.callbacks.ledger import Ledger
from nxjobs.calling_hours import Policy
from nxjobs.client.agent import AgentClient
from nxjobs.client.api2 import Api2Client
from nxjobs.client.callbot import CallbotClient
from nxjobs.client.transport import Transport
from nxjobs.coalesce import CoalesceQueue
from nxjobs.deadletters import DeadLetters
from nxjobs.ratelimit.gate import RateGate
from nxjobs.ratelimit.limiter import RateLimiter
from nxjobs.redis_conn import target
from nxjobs.schedule import Schedule
from nxjobs.store import RecordStore
from nxjobs.suppression import SuppressionList
from tasks.limits import limits_for


@dataclass
class Services:
    settings: Settings

    @cached_property
    def redis(self):
        return target(**self.settings.store_redis()).connect()

    @cached_property
    def broker_redis(self):
        """The broker's Redis (kombu's queue lists and unacked hash), the record store's unless
        NXJOBS_BROKER_URL sets it apart."""
        settings = self.settings
        if (settings.broker_url or settings.redis_url) == settings.redis_url and (
            settings.broker_sentinel_master or settings.redis_sentinel_master
        ) == settings.redis_sentinel_master:
            return self.redis
        return target(**settings.broker_redis()).connect()

    @cached_property
    def store(self) -> RecordStore:
        return RecordStore(
            self.redis,
            ttl_s=self.settings.record_ttl_s,
            callback_deadlines_s=self.settings.callbacks.deadlines_s(),
            retention_s=self.settings.retention.by_state(),
        )

    @cached_property
    def ledger(self) -> Ledger:
        cb = self.settings.callbacks
        return Ledger(
            self.redis,
            unmatched_max=cb.unmatched_max,
            unmatched_max_bytes=cb.unmatched_max_bytes,
            unmatched_body_bytes=cb.unmatched_body_bytes,
        )

    @cached_property
    def coalesce(self) -> CoalesceQueue:
        return CoalesceQueue(self.redis, self.settings.coalesce, ttl_s=self.settings.record_ttl_s)

    @cached_property
    def calling_hours(self) -> Policy | None:
        """None when calling hours are off (checked at worker startup too: workers/__main__.py)."""
        return Policy.from_settings(self.settings.calling_hours)

    @cached_property
    def schedule(self) -> Schedule:
        """Where a call outside its calling hours waits for the next opening."""
        return Schedule(self.redis, self.settings.record_ttl_s)

    @cached_property
    def suppression(self) -> SuppressionList:
        secret = self.settings.suppression.secret
        return SuppressionList(self.redis, secret.get_secret_value() if secret else None)

    @cached_property
    def dead_letters(self) -> DeadLetters:
        d = self.settings.dead_letters
        return DeadLetters(self.redis, max_entries=d.max_entries, max_age_s=d.max_age_s)

    @cached_property
    def transport(self) -> Transport:
        http = self.settings.http
        return Transport(
            connect_timeout_s=http.connect_timeout_s, read_timeout_s=http.read_timeout_s
        )

    @cached_property
    def rng(self) -> random.Random:
        return random.Random()

    @cached_property
    def limiter(self) -> RateLimiter:
        return RateLimiter(self.redis, horizon_s=self.settings.ratelimit.horizon_s)

    @cached_property
    def gate(self) -> RateGate:
        return RateGate(
            self.limiter,
            lambda family, endpoint, body: limits_for(self.settings, family, endpoint, body),
        )

    @cached_property
    def api2(self) -> Api2Client:
        self.settings.require("api2")
        s = self.settings.api2
        assert s.access_key and s.access_secret  # require() checked them
        return Api2Client(
            self.transport,
            base_url=s.base_url,
            access_key=s.access_key,
            access_secret=s.access_secret.get_secret_value(),
            algorithm=s.algorithm,
            gate=self.gate,
        )

    @cached_property
    def callbot(self) -> CallbotClient:
        self.settings.require("callbot")
        s = self.settings.callbot
        assert s.uuid and s.secret_key  # require() checked them
        return CallbotClient(
            self.transport,
            base_url=s.base_url,
            uuid=s.uuid,
            secret_key=s.secret_key.get_secret_value(),
            algorithm=s.algorithm,
            gate=self.gate,
        )

    @cached_property
    def agent(self) -> AgentClient:
        self.settings.require("agent")
        s = self.settings.agent
        assert s.appkey and s.secretkey  # require() checked them
        return AgentClient(
            self.transport,
            base_url=s.base_url,
            cdr_base_url=s.cdr_base_url,
            appkey=s.appkey,
            secretkey=s.secretkey.get_secret_value(),
            gate=self.gate,
        )

    @cached_property
    def agent_tokens(self) -> AgentTokenCache:
        return AgentTokenCache(
            self.redis, self.agent, renew_fraction=self.settings.agent.token_renew_fraction
        )


_services: Services | None = None


def get_services() -> Services:
    global _services
    if _services is None:
        _services = Services(load_settings())
    return _services
