"""Sending requests to a provider: one pooled aiohttp session, retries with jittered backoff.

Every provider goes through `Transport`, so retry rules, timeouts and the mapping of
aiohttp failures to the error tree live in one place. A request is retried on 429, on 5xx
(529 included) and on connection failures and timeouts; any other status fails at once.
A stream is retried only until its response status arrives: once an event may have
reached the client, replaying the call would duplicate text and cost.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import partial
from typing import Any, TypeVar

import aiohttp
import orjson
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.wait import wait_base

from serve_app.errors import UpstreamError, upstream_error_for_status
from serve_app.providers.sse import SseEvent, iter_sse
from serve_app.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Enough for every in-flight model call of a replica; the pool only bounds sockets, the
# Ray deployment's max_ongoing_requests bounds the calls.
CONNECTION_LIMIT = 1024
KEEPALIVE_S = 30.0
DNS_CACHE_TTL_S = 300

PROVIDER_MESSAGE_MAX_CHARS = 500


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 4  # the first try included
    backoff_multiplier_s: float = 0.2
    backoff_max_s: float = 4.0
    retry_after_max_s: float = 10.0  # a provider's Retry-After is honoured up to this

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(max_attempts=max(1, settings.upstream_max_attempts))


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where one provider's requests go, with the headers built once."""

    provider: str  # "anthropic" | "openai" | "openai_compatible"
    label: str  # "sandbox" when the sandbox serves the provider, else the provider name
    url: str
    headers: Mapping[str, str]
    credential_hint: str  # the setting to fix when the provider refuses our credentials


class _RetryableStatus(Exception):
    """A 429 or 5xx answer: retried, and mapped to the error tree only if it is the last."""

    def __init__(self, status: int, message: str, retry_after_s: float | None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after_s = retry_after_s


class _WaitRetryAfterOrBackoff(wait_base):
    """The provider's Retry-After when it sent one (capped), else jittered exponential backoff."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._backoff = wait_random_exponential(
            multiplier=policy.backoff_multiplier_s, max=policy.backoff_max_s
        )
        self._retry_after_max_s = policy.retry_after_max_s

    def __call__(self, retry_state: RetryCallState) -> float:
        failure = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(failure, _RetryableStatus) and failure.retry_after_s is not None:
            return min(failure.retry_after_s, self._retry_after_max_s)
        return self._backoff(retry_state)


class Transport:
    """Owns the aiohttp session of one router; created lazily inside the running loop."""

    def __init__(
        self, *, timeout_s: float, connect_timeout_s: float, retry_policy: RetryPolicy
    ) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._timeout_s = timeout_s

        # A whole answer must arrive within timeout_s. A stream may run longer than that in
        # total, so only the silence between two reads is bounded.
        self._complete_timeout = aiohttp.ClientTimeout(
            total=timeout_s, sock_connect=connect_timeout_s
        )
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=timeout_s
        )

        self._max_attempts = retry_policy.max_attempts
        self._stop = stop_after_attempt(retry_policy.max_attempts)
        self._wait = _WaitRetryAfterOrBackoff(retry_policy)
        self._retry = retry_if_exception_type(
            (
                _RetryableStatus,
                aiohttp.ClientConnectionError,
                aiohttp.ClientPayloadError,
                TimeoutError,
            )
        )

    async def post_json(self, endpoint: Endpoint, body: bytes, request_id: str) -> dict[str, Any]:
        """POST `body` and return the parsed JSON answer of a 2xx response."""

        async def attempt() -> bytes:
            async with self._open_session().post(
                endpoint.url,
                data=body,
                headers=endpoint.headers,
                timeout=self._complete_timeout,
                allow_redirects=False,
            ) as response:
                if not 200 <= response.status < 300:
                    await _raise_for_status(response, endpoint)
                return await response.read()

        raw = await self._with_retries(attempt, endpoint, request_id)

        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError(
                f"the {endpoint.provider} upstream answered with a body that is not JSON"
            ) from None
        if not isinstance(answer, dict):
            raise UpstreamError(f"the {endpoint.provider} upstream answered with a non-object body")
        return answer

    async def open_stream(
        self, endpoint: Endpoint, body: bytes, request_id: str
    ) -> aiohttp.ClientResponse:
        """POST `body` and return the open 2xx response; read it with `read_events`."""

        async def attempt() -> aiohttp.ClientResponse:
            response = await self._open_session().post(
                endpoint.url,
                data=body,
                headers=endpoint.headers,
                timeout=self._stream_timeout,
                allow_redirects=False,
            )
            if not 200 <= response.status < 300:
                try:
                    await _raise_for_status(response, endpoint)
                finally:
                    response.release()
            return response

        return await self._with_retries(attempt, endpoint, request_id)

    async def read_events(
        self, response: aiohttp.ClientResponse, endpoint: Endpoint, request_id: str
    ) -> AsyncIterator[SseEvent]:
        """The SSE events of an open stream; a broken stream raises UpstreamError."""
        finished = False
        try:
            async for event in iter_sse(response.content.iter_any()):
                yield event
            finished = True
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.warning(
                "request %s: %s stream broke off: %r", request_id, endpoint.provider, exc
            )
            raise UpstreamError(
                f"the {endpoint.provider} stream broke off: {self._describe(exc, streaming=True)}"
            ) from exc
        except UnicodeDecodeError:
            raise UpstreamError(f"the {endpoint.provider} stream is not valid UTF-8") from None
        finally:
            # A stream read to its end leaves a reusable connection; one abandoned halfway
            # (client gone, error) must be closed, or the pool would hand out its leftovers.
            if finished:
                response.release()
            else:
                response.close()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=CONNECTION_LIMIT,
                keepalive_timeout=KEEPALIVE_S,
                ttl_dns_cache=DNS_CACHE_TTL_S,
            )
            self._session = aiohttp.ClientSession(connector=connector, raise_for_status=False)
        return self._session

    async def _with_retries(
        self, attempt: Callable[[], Awaitable[T]], endpoint: Endpoint, request_id: str
    ) -> T:
        retrying = AsyncRetrying(
            stop=self._stop,
            wait=self._wait,
            retry=self._retry,
            reraise=True,
            before_sleep=partial(_log_retry, endpoint, request_id),
        )
        try:
            return await retrying(attempt)
        except _RetryableStatus as failure:
            raise upstream_error_for_status(failure.status, failure.message) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            attempts = retrying.statistics.get("attempt_number", 1)
            logger.warning(
                "request %s: %s upstream unreachable after %s attempts: %r",
                request_id,
                endpoint.provider,
                attempts,
                exc,
            )
            raise UpstreamError(
                f"could not reach the {endpoint.provider} upstream: "
                f"{self._describe(exc, streaming=False)} ({_attempts_text(attempts)})"
            ) from exc

    def _describe(self, exc: BaseException, *, streaming: bool) -> str:
        """Client-safe words for a transport failure: aiohttp's own text names hosts."""
        if isinstance(exc, TimeoutError):
            if streaming:
                return f"nothing arrived for {self._timeout_s:g} s"
            return f"no answer within {self._timeout_s:g} s"
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return "the server closed the connection"
        if isinstance(exc, aiohttp.ClientPayloadError):
            return "the response was cut off"
        return "the connection failed"


def _attempts_text(attempts: int) -> str:
    return "1 attempt" if attempts == 1 else f"{attempts} attempts"


async def _raise_for_status(response: aiohttp.ClientResponse, endpoint: Endpoint) -> None:
    status = response.status
    raw = await response.read()

    if status in (401, 403):
        # The provider's text for a bad key may echo part of it; say what to fix instead.
        message = (
            f"the {endpoint.provider} upstream refused our credentials ({status}): "
            f"check {endpoint.credential_hint}"
        )
    else:
        detail = _provider_message(raw) or response.reason or "no error message"
        message = f"the {endpoint.provider} upstream answered {status}: {detail}"

    if status == 429 or status >= 500:
        raise _RetryableStatus(status, message, _retry_after_s(response.headers))
    raise upstream_error_for_status(status, message)


def _provider_message(raw: bytes) -> str:
    """The message of an error body: Anthropic and OpenAI nest it, vLLM and Ollama may not."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(body, dict):
        return ""

    error = body.get("error")
    if isinstance(error, dict):
        message = error.get("message")
    elif isinstance(error, str):
        message = error
    else:
        message = body.get("message")
    if not isinstance(message, str):
        return ""
    return message[:PROVIDER_MESSAGE_MAX_CHARS]


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Retry-After in seconds (RFC 9110 section 10.2.3: seconds or an HTTP date), or OpenAI's ms."""
    retry_after_ms = headers.get("retry-after-ms")
    if retry_after_ms:
        try:
            return max(0.0, float(retry_after_ms) / 1000)
        except ValueError:
            pass

    retry_after = headers.get("retry-after")
    if not retry_after:
        return None
    try:
        return max(0.0, float(retry_after))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(retry_after)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # "-0000" in an HTTP date still means GMT
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _log_retry(endpoint: Endpoint, request_id: str, retry_state: RetryCallState) -> None:
    failure = retry_state.outcome.exception() if retry_state.outcome else None
    reason = failure.status if isinstance(failure, _RetryableStatus) else repr(failure)
    sleep_s = retry_state.next_action.sleep if retry_state.next_action else 0.0
    logger.warning(
        "request %s: %s upstream attempt %s failed (%s); retrying in %.2f s",
        request_id,
        endpoint.provider,
        retry_state.attempt_number,
        reason,
        sleep_s,
    )
