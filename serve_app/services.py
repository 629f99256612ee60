"""Everything a Gateway replica holds for its lifetime: store clients and the router."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis

from serve_app.canonical import ModelAnswer, ModelCall, StreamEvent
from serve_app.catalog import Catalog
from serve_app.engine.in_flight import InFlightTurns
from serve_app.settings import Settings
from serve_app.stores.accounts import AccountStore
from serve_app.stores.idempotency import IdempotencyStore
from serve_app.stores.invalidation import InvalidationBus
from serve_app.stores.keys import KeyStore
from serve_app.stores.ledger import Ledger
from serve_app.stores.messages import MessageStore
from serve_app.stores.mongo import MongoStore
from serve_app.stores.redis_client import connect_redis, redis_errors
from serve_app.stores.spend import SpendCounters
from serve_app.stores.threads import ThreadStore
from serve_app.stores.turn_state import TurnState
from serve_app.stores.turn_writes import TurnWriter

logger = logging.getLogger(__name__)


class RouterClient(Protocol):
    """The ModelRouter as the Gateway sees it: in process, or a Ray Serve handle."""

    async def complete(self, call: ModelCall) -> ModelAnswer: ...

    def stream(self, call: ModelCall) -> AsyncIterator[StreamEvent]: ...

    def upstream_label(self, provider: str) -> str: ...

    async def ping(self) -> None: ...


@dataclass
class Services:
    settings: Settings
    catalog: Catalog
    mongo: MongoStore
    redis: Redis
    bus: InvalidationBus
    keys: KeyStore
    accounts: AccountStore
    threads: ThreadStore
    messages: MessageStore
    ledger: Ledger
    spend: SpendCounters
    turn_state: TurnState
    turn_writer: TurnWriter
    idempotency: IdempotencyStore
    router: RouterClient
    turns_in_flight: InFlightTurns

    @classmethod
    def create(cls, settings: Settings, router: RouterClient) -> Services:
        mongo = MongoStore(settings.mongodb_uri, settings.mongodb_db)
        redis = connect_redis(settings.redis_url)
        bus = InvalidationBus(redis)
        keys = KeyStore(mongo.keys, bus, settings.key_cache_ttl_s)
        messages = MessageStore(mongo.messages)
        ledger = Ledger(mongo.ledger)
        return cls(
            settings=settings,
            catalog=Catalog.load(settings.models_path),
            mongo=mongo,
            redis=redis,
            bus=bus,
            keys=keys,
            accounts=AccountStore(mongo.accounts, keys),
            threads=ThreadStore(mongo.threads, bus, settings.key_cache_ttl_s),
            messages=messages,
            ledger=ledger,
            spend=SpendCounters(redis, ledger, settings.reservation_ttl_s),
            turn_state=TurnState(
                redis,
                messages,
                settings.history_max_turns,
                settings.turn_lock_ttl_s,
                settings.turn_lock_wait_s,
            ),
            turn_writer=TurnWriter(mongo, messages, ledger),
            idempotency=IdempotencyStore(redis, mongo.idempotency, settings.idempotency_ttl_s),
            router=router,
            turns_in_flight=InFlightTurns(),
        )

    async def start(self) -> None:
        await self.mongo.ensure_indexes()
        self.bus.start()

    async def redis_ping(self) -> None:
        async with redis_errors("ping"):
            await self.redis.ping()

    async def aclose(self) -> None:
        await self.turns_in_flight.wait(self.settings.shutdown_turn_wait_s)
        await self.bus.aclose()
        await self.redis.aclose()
        await self.mongo.aclose()
