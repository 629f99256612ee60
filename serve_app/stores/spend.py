"""Spend caps: atomic reservations in Redis, rebuilt from the MongoDB ledger when missing.

Per key, Redis holds one hash `{period, spent, reserved, epoch}` and one hash of open
reservations `{call_id: "amount:expires_ms"}`. The reserve script admits a call only if
`spent + reserved + worst_case <= cap`, in one atomic step, so concurrent turns can never
together promise more than the cap. Settling swaps the reservation for the actual cost.

The ledger is the truth (invariant 3). Every reservation is written to the ledger before
Redis admits it, and its holder keeps its expiry ahead in both stores while the call
runs. (A call that its process expects to be refused, because the key had no room left
at its last check, is first judged by Redis alone, so refusals cost no ledger writes.)
The counters are rebuilt from the ledger (settled spend of the period, plus every
reservation still open) whenever Redis cannot vouch for them:

- the hash is missing (Redis restarted, was wiped, or failed over to a replica that
  lagged) or belongs to a past period;
- a reservation expired: its holder died, or lost Redis while settling, so only the
  ledger knows whether the call was billed.

The check that finds counters untrustworthy marks them so in the same script (`period`
emptied, a fresh `epoch`), and nothing is admitted until a rebuild seeds them again. The
seed applies only if the epoch is still the one its rebuilder saw, so a rebuild that read
the ledger before some later admission can never overwrite it. If neither store answers,
the caller gets StoreUnavailable (503): spend never goes unchecked.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from serve_app.budget import BudgetPeriod, PeriodWindow, window_at
from serve_app.clock import now_ms as clock_ms
from serve_app.errors import StoreUnavailable
from serve_app.stores.ledger import Ledger, Reservation
from serve_app.stores.redis_client import redis_errors, spend_keys
from serve_app.stores.renewal import renewed

logger = logging.getLogger(__name__)

# Shared by reserve and peek. KEYS: spend hash, reservations hash.
# ARGV[1] period_id, ARGV[2] now_ms, ARGV[3] a fresh epoch, used if this marks the counters
# stale. Leaves `spent`, `reserved` and `epoch` set, or returns {-1, 0, 0, epoch}.
_CHECK = """
local state = redis.call('HMGET', KEYS[1], 'period', 'spent', 'reserved', 'epoch')
local function stale()
  if state[1] == '' then
    return {-1, 0, 0, state[4] or ''}
  end
  redis.call('HSET', KEYS[1], 'period', '', 'epoch', ARGV[3])
  return {-1, 0, 0, ARGV[3]}
end
if state[1] ~= ARGV[1] then
  return stale()
end
local now = tonumber(ARGV[2])
for _, entry in ipairs(redis.call('HVALS', KEYS[2])) do
  if tonumber(string.match(entry, ':(%d+)$')) <= now then
    return stale()
  end
end
local spent = tonumber(state[2] or '0')
local reserved = tonumber(state[3] or '0')
local epoch = state[4] or ''
"""

# Shared by reserve and fits, after _CHECK. ARGV[4] cap_micros (-1: no cap), ARGV[5]
# amount_micros, ARGV[6] call_id. A rebuild seeds every reservation the ledger holds,
# including those of calls still waiting for the reserve script: such an entry is judged
# again, as if it were not there. Leaves `seeded`, `amount` and `fits` set.
_JUDGE = """
local seeded = redis.call('HGET', KEYS[2], ARGV[6])
if seeded then
  reserved = reserved - tonumber(string.match(seeded, '^(%d+):'))
end
local amount = tonumber(ARGV[5])
local cap = tonumber(ARGV[4])
local fits = cap < 0 or spent + reserved + amount <= cap
"""

# ARGV[7] expires_ms -> {admitted (1) | refused (0) | counters stale (-1), spent, reserved,
# epoch}
_RESERVE = (
    _CHECK
    + _JUDGE
    + """
if not fits then
  if seeded then
    redis.call('HDEL', KEYS[2], ARGV[6])
    redis.call('HSET', KEYS[1], 'reserved', reserved)
  end
  return {0, spent, reserved, epoch}
end
redis.call('HSET', KEYS[2], ARGV[6], ARGV[5] .. ':' .. ARGV[7])
redis.call('HSET', KEYS[1], 'reserved', reserved + amount)
return {1, spent, reserved + amount, epoch}
"""
)

# The reserve script's verdict without its writes.
_FITS = _CHECK + _JUDGE + "\nreturn {fits and 1 or 0, spent, reserved, epoch}\n"

_PEEK = _CHECK + "\nreturn {1, spent, reserved, epoch}\n"

# KEYS: spend hash, reservations hash
# ARGV: call_id, actual_micros (0 to release), period_id of the ledger record
# The actual cost is added whether or not the reservation is still open: after a rebuild
# that already counted the call this counts it twice (refusing early until the next
# rebuild), while dropping it could overspend.
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

# KEYS: reservations hash; ARGV: call_id, expires_ms
_RENEW = """
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], string.match(entry, '^(%d+):') .. ':' .. ARGV[2])
return 1
"""

# KEYS: spend hash, reservations hash
# ARGV: period_id, spent_micros, expected epoch, new epoch, then call_id, "amount:expires_ms"
# for each open reservation in the ledger.
_SEED = """
if (redis.call('HGET', KEYS[1], 'epoch') or '') ~= ARGV[3] then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
local reserved = 0
for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  reserved = reserved + tonumber(string.match(ARGV[i + 1], '^(%d+):'))
end
redis.call('HSET', KEYS[1], 'period', ARGV[1], 'spent', ARGV[2], 'reserved', reserved,
  'epoch', ARGV[4])
return 1
"""

# Rebuilds that lose the race to another rebuild retry; this many in a row means the
# counters keep going stale faster than they can be rebuilt.
_MAX_REBUILDS = 5
# Keys whose remaining budget a process remembers (see SpendCounters._note_room).
_MAX_ROOM_HINTS = 100_000


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
        self._peek = redis.register_script(_PEEK)
        self._fits = redis.register_script(_FITS)
        self._settle = redis.register_script(_SETTLE)
        self._renew = redis.register_script(_RENEW)
        self._seed = redis.register_script(_SEED)
        self._room_hints: dict[str, int] = {}

    async def reserve(
        self,
        reservation: Reservation,
        period: BudgetPeriod,
        cap_micros: int | None,
        now_ms: int,
    ) -> Admission:
        """Hold the call's worst case against the key's budget, or refuse it.

        A refused call leaves nothing behind; an admitted one must be settled, released
        or left to expire.
        """
        window = window_at(period, now_ms)
        key_id, amount_micros = reservation.key_id, reservation.amount_micros
        judged = [-1 if cap_micros is None else cap_micros, amount_micros, reservation.call_id]
        if cap_micros is not None and amount_micros > self._room_hints.get(key_id, amount_micros):
            # Likely refused: ask Redis alone before writing to the ledger, so a client
            # hammering a key at its cap costs one Redis round trip per refusal, not two
            # MongoDB writes.
            fits, spent, reserved = await self._checked(self._fits, key_id, window, now_ms, judged)
            self._note_room(key_id, cap_micros, spent, reserved)
            if not fits:
                return Admission(False, spent, reserved, window)

        expires_ms = now_ms + self._reservation_ttl_ms
        # In the ledger first: from the moment Redis admits it, a rebuild must see it.
        await self._ledger.reserve(reservation, expires_ms, now_ms)

        try:
            verdict, spent, reserved = await self._checked(
                self._reserve, key_id, window, now_ms, [*judged, expires_ms]
            )
        except BaseException:
            await self._forget(reservation)
            raise
        if verdict != 1:
            await self._forget(reservation)
        if cap_micros is not None:
            self._note_room(key_id, cap_micros, spent, reserved)
        return Admission(verdict == 1, spent, reserved, window)

    def _note_room(self, key_id: str, cap_micros: int, spent: int, reserved: int) -> None:
        """Remember what was left of a key's budget. Only a hint: settled calls give room
        back and caps change, so it decides which check runs first, never an answer."""
        if len(self._room_hints) >= _MAX_ROOM_HINTS:
            self._room_hints.clear()
        self._room_hints[key_id] = cap_micros - spent - reserved

    async def settle(self, key_id: str, call_id: str, actual_micros: int, period_id: str) -> None:
        async with redis_errors("settle"):
            await self._settle(keys=spend_keys(key_id), args=[call_id, actual_micros, period_id])

    async def release(self, key_id: str, call_id: str) -> None:
        """Give a reservation back: the call never reached (or never billed at) the upstream.

        Both stores are tried. One that fails keeps the reservation until it expires, which
        only refuses early, so a failure here is logged, not raised.
        """
        outcomes = await asyncio.gather(
            self.settle(key_id, call_id, 0, ""), self._ledger.drop(call_id), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, StoreUnavailable):
                logger.warning("releasing reservation %s failed; it will expire", call_id)
            elif isinstance(outcome, BaseException):
                raise outcome

    @asynccontextmanager
    async def kept_alive(self, key_id: str, call_id: str) -> AsyncIterator[None]:
        """Push a reservation's expiry ahead while its call runs, however long that is."""
        interval_s = self._reservation_ttl_ms / 3000
        async with renewed(
            lambda: self._renew_reservation(key_id, call_id), interval_s, f"reservation {call_id}"
        ):
            yield

    async def view(self, key_id: str, period: BudgetPeriod, now_ms: int) -> SpendView:
        """Current spend of a key in its current period, rebuilding counters if stale."""
        window = window_at(period, now_ms)
        _, spent, reserved = await self._checked(self._peek, key_id, window, now_ms, [])
        return SpendView(spent, reserved, window)

    async def _checked(
        self, script: AsyncScript, key_id: str, window: PeriodWindow, now_ms: int, extra: list
    ) -> tuple[int, int, int]:
        """Run a script that starts with _CHECK, rebuilding the counters when it finds them
        stale, until it gets an answer."""
        keys = spend_keys(key_id)
        for _ in range(_MAX_REBUILDS):
            args = [window.period_id, now_ms, secrets.token_hex(8), *extra]
            async with redis_errors("spend check"):
                verdict, spent, reserved, epoch = await script(keys=keys, args=args)
            if verdict != -1:
                return int(verdict), int(spent), int(reserved)
            await self._rebuild(key_id, window, epoch, now_ms)
        raise StoreUnavailable("spend counters could not be rebuilt; retry shortly")

    async def _rebuild(self, key_id: str, window: PeriodWindow, epoch: str, now_ms: int) -> None:
        spent, open_reservations = await asyncio.gather(
            self._ledger.spent_micros(key_id, window.start_ms, window.end_ms),
            self._ledger.open_reservations(key_id, now_ms),
        )
        entries = []
        for held in open_reservations:
            entries += [held.call_id, f"{held.amount_micros}:{held.expires_at_ms}"]
        args = [window.period_id, spent, epoch, secrets.token_hex(8), *entries]

        async with redis_errors("rebuild spend"):
            seeded = await self._seed(keys=spend_keys(key_id), args=args)
        if seeded:
            logger.info(
                "spend counters for key %s rebuilt from the ledger: period %s, spent %d "
                "micros, %d calls in flight",
                key_id,
                window.period_id,
                spent,
                len(open_reservations),
            )

    async def _forget(self, reservation: Reservation) -> None:
        """Take back a reservation Redis did not admit: from the ledger first, then from
        Redis, where a rebuild that read the ledger just before may have seeded it."""
        call_id = reservation.call_id
        try:
            await asyncio.shield(self._ledger.drop(call_id))
            await asyncio.shield(self.settle(reservation.key_id, call_id, 0, ""))
        except StoreUnavailable:
            # It expires on its own; until then it is counted, which only refuses early.
            logger.warning("could not take back refused reservation %s", call_id)

    async def _renew_reservation(self, key_id: str, call_id: str) -> None:
        expires_ms = clock_ms() + self._reservation_ttl_ms
        # The ledger first: its expiry must never fall behind Redis's, or a rebuild could
        # drop a call that is still running.
        await self._ledger.renew(call_id, expires_ms)
        async with redis_errors("renew reservation"):
            await self._renew(keys=spend_keys(key_id)[1:], args=[call_id, expires_ms])
