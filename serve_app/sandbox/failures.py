"""Which attempts of a request a `sandbox:fail=STATUSxK` directive fails.

Attempts are counted per exact request body, so a client that retries the same body sees
K failures and then an answer, while a different request starts its own count.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

# Load tests send many distinct bodies; the oldest counts are forgotten first, which only
# matters to a body retried after this many others.
REMEMBERED_BODIES_MAX = 10_000


class FailureBook:
    def __init__(self, max_bodies: int = REMEMBERED_BODIES_MAX) -> None:
        self._attempts_by_body: OrderedDict[bytes, int] = OrderedDict()
        self._max_bodies = max_bodies

    def should_fail(self, body: bytes, failing_attempts: int | None) -> bool:
        """Record one attempt of `body`; True while it is within the first `failing_attempts`.

        `failing_attempts` None means every attempt fails, and nothing needs remembering.
        """
        if failing_attempts is None:
            return True

        key = hashlib.sha256(body).digest()
        attempt = self._attempts_by_body.pop(key, 0) + 1
        self._attempts_by_body[key] = attempt
        if len(self._attempts_by_body) > self._max_bodies:
            self._attempts_by_body.popitem(last=False)
        return attempt <= failing_attempts

    def clear(self) -> None:
        self._attempts_by_body.clear()
