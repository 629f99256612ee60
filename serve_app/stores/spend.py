"""Spend caps: atomic reservations in Redis, rebuilt from the MongoDB ledger when missing.

Per key, Redis holds one hash `{period, spent, reserved}` and one hash of open
reservations `{reservation_id: "amount:expires_ms"}`. The reserve script admits a call
only if `spent + reserved + worst_case <= cap`, in one atomic step, so concurrent turns
can never together promise more than the cap. Settling swaps the reservation for the
actual cost. A reservation whose holder died is swept once it expires, so a crashed
replica cannot lock a key out forever.

The ledger is the truth (invariant 3): when the hash is missing (Redis restarted or was
wiped) or belongs to a past period, the counters are rebuilt from the ledger before
anything is admitted. If neither store answers, the caller gets StoreUnavailable (503).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from redis.asyncio import Redis

from serve_app.budget import BudgetPeriod, PeriodWindow, window_at
from serve_app.stores.ledger import Ledger
from serve_app.stores.redis_client import redis_errors, spend_keys

logger = logging.getLogger(__name__)

# KEYS: spend hash, reservations hash
# ARGV: period_id, cap_micros (-1: no cap), amount_micros, reservation_id, now_ms, expires_ms
# -> {admitted (1) | refused (0) | counters missing (-1), spent, reserved}
_RESERVE = """
if redis.call('HGET', KEYS[1], 'period') ~= ARGV[1] then
  return {-1, 0, 0}
end
local now = tonumber(ARGV[5])
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local open = redis.call('HGETALL', KEYS[2])
for i = 1, #open, 2 do
  local amount, expires = string.match(open[i + 1], '^(%d+):(%d+)$')
  if tonumber(expires) <= now then
    redis.call('HDEL', KEYS[2], open[i])
    reserved = reserved - tonumber(amount)
  end
end
if reserved < 0 then reserved = 0 end
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local amount = tonumber(ARGV[3])
local cap = tonumber(ARGV[2])
if cap >= 0 and spent + reserved + amount > cap then
  redis.call('HSET', KEYS[1], 'reserved', reserved)
  return {0, spent, reserved}
end
redis.call('HSET', KEYS[2], ARGV[4], ARGV[3] .. ':' .. ARGV[6])
redis.call('HSET', KEYS[1], 'reserved', reserved + amount)
return {1, spent, reserved + amount}
"""

# KEYS: spend hash, reservations hash
# ARGV: reservation_id, actual_micros (0 to release), period_id of the ledger record
# The actual cost is added whether or not the reservation is still open: counting a call
# twice after a rebuild only refuses early, while dropping it could overspend.
_SETTLE = """
local entry = redis.call('HGET', KEYS[2], ARGV[1])
if entry then
  local amount = tonumber(string.match(entry, '^(%d+):'))
  redis.call('HDEL', KEYS[2], ARGV[1])
  local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0') - amount
  if reserved < 0 then reserved = 0 end
  redis.call('HSET', KEYS[1], 'reserved', reserved)
end
if tonumber(ARGV[2]) > 0 and redis.call('HGET', KEYS[1], 'period') == ARGV[3] then
  redis.call('HINCRBY', KEYS[1], 'spent', ARGV[2])
end
return 1
"""

# KEYS: spend hash, reservations hash; ARGV: period_id, spent_micros from the ledger
# Seeds only if nobody else already did for this period.
_SEED = """
if redis.call('HGET', KEYS[1], 'period') == ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'period', ARGV[1], 'spent', ARGV[2], 'reserved', 0)
return 1
"""


@dataclass(frozen=True, slots=True)
class Admission:
    admitted: bool
    spent_micros: int
    reserved_micros: int
    window: PeriodWindow


@dataclass(frozen=True, slots=True)
class SpendView:
    spent_micros: int
    reserved_micros: int
    window: PeriodWindow


class SpendCounters:
    def __init__(self, redis: Redis, ledger: Ledger, reservation_ttl_s: float) -> None:
        self._redis = redis
        self._ledger = ledger
        self._reservation_ttl_ms = int(reservation_ttl_s * 1000)
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        self._seed = redis.register_script(_SEED)

    async def reserve(
        self,
        key_id: str,
        period: BudgetPeriod,
        cap_micros: int | None,
        amount_micros: int,
        reservation_id: str,
        now_ms: int,
    ) -> Admission:
        window = window_at(period, now_ms)
        keys = spend_keys(key_id)
        args = [
            window.period_id,
            -1 if cap_micros is None else cap_micros,
            amount_micros,
            reservation_id,
            now_ms,
            now_ms + self._reservation_ttl_ms,
        ]

        async with redis_errors("reserve"):
            verdict, spent, reserved = await self._reserve(keys=keys, args=args)
        if verdict == -1:
            await self._rebuild(key_id, window)
            async with redis_errors("reserve"):
                verdict, spent, reserved = await self._reserve(keys=keys, args=args)

        return Admission(verdict == 1, int(spent), int(reserved), window)

    async def settle(
        self, key_id: str, reservation_id: str, actual_micros: int, period_id: str
    ) -> None:
        async with redis_errors("settle"):
            await self._settle(
                keys=spend_keys(key_id), args=[reservation_id, actual_micros, period_id]
            )

    async def release(self, key_id: str, reservation_id: str) -> None:
        """Give a reservation back: the call never reached (or never billed at) the upstream."""
        await self.settle(key_id, reservation_id, 0, "")

    async def view(self, key_id: str, period: BudgetPeriod, now_ms: int) -> SpendView:
        """Current spend of a key in its current period, rebuilding counters if missing."""
        window = window_at(period, now_ms)
        spend_key = spend_keys(key_id)[0]

        async with redis_errors("read spend"):
            counters = await self._redis.hgetall(spend_key)
        if counters.get("period") != window.period_id:
            await self._rebuild(key_id, window)
            async with redis_errors("read spend"):
                counters = await self._redis.hgetall(spend_key)

        return SpendView(int(counters.get("spent", 0)), int(counters.get("reserved", 0)), window)

    async def _rebuild(self, key_id: str, window: PeriodWindow) -> None:
        spent = await self._ledger.spent_micros(key_id, window.start_ms, window.end_ms)
        async with redis_errors("rebuild spend"):
            seeded = await self._seed(keys=spend_keys(key_id), args=[window.period_id, spent])
        if seeded:
            logger.info(
                "spend counters for key %s rebuilt from the ledger: period %s, spent %d micros",
                key_id,
                window.period_id,
                spent,
            )
