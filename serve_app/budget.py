"""Budget periods: the calendar window (UTC) a key's spend cap applies to."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

BudgetPeriod = Literal["month", "day", "lifetime"]


@dataclass(frozen=True, slots=True)
class PeriodWindow:
    period_id: str  # "2026-12" | "2026-12-03" | "lifetime": changes exactly when spend resets
    start_ms: int
    end_ms: int | None  # None for lifetime: it never resets


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def window_at(period: BudgetPeriod, now_ms: int) -> PeriodWindow:
    now = datetime.fromtimestamp(now_ms / 1000, tz=UTC)

    if period == "lifetime":
        return PeriodWindow("lifetime", 0, None)

    if period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        end = datetime.fromordinal(start.toordinal() + 1).replace(tzinfo=UTC)
        return PeriodWindow(start.strftime("%Y-%m-%d"), _ms(start), _ms(end))

    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if start.month == 12:
        end = start.replace(year=start.year + 1, month=1)
    else:
        end = start.replace(month=start.month + 1)
    return PeriodWindow(start.strftime("%Y-%m"), _ms(start), _ms(end))


def iso_from_ms(moment_ms: int | None) -> str | None:
    if moment_ms is None:
        return None
    moment = datetime.fromtimestamp(moment_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
