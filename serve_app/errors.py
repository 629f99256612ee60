"""The one error tree of the service.

Every failure a client can see is a `ThreadgateError` subclass that knows its HTTP status
and its API error type. `message` is written for the client; anything internal (exception
text, hosts, stack traces) goes to the log, never into `message`. Library exceptions are
mapped once, where the library is called, to the most specific class here.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ThreadgateError(Exception):
    """Base class: an error with a client-facing message and an HTTP mapping."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "api_error"

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    @property
    def headers(self) -> dict[str, str]:
        return {}

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.error_type, "message": self.message}
        error.update(self.fields)
        body: dict[str, Any] = {"type": "error", "error": error}
        if request_id:
            body["request_id"] = request_id
        return body

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, message={self.message!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors cross Ray process boundaries; keep every attribute on the way, not
        # just the positional message that Exception pickles by default.
        return (_rebuild_error, (type(self), self.message), self.__dict__)


class InvalidRequest(ThreadgateError):
    status = 400
    error_type = "invalid_request_error"


class AuthenticationFailed(ThreadgateError):
    status = 401
    error_type = "authentication_error"


class SpendCapExceeded(ThreadgateError):
    """The worst case of the next model call does not fit in the key's remaining budget."""

    status = 402
    error_type = "spend_cap_exceeded"


class PermissionDenied(ThreadgateError):
    status = 403
    error_type = "permission_error"


class NotFound(ThreadgateError):
    status = 404
    error_type = "not_found_error"


class Conflict(ThreadgateError):
    status = 409
    error_type = "conflict_error"


class MethodNotAllowed(ThreadgateError):
    status = 405
    error_type = "invalid_request_error"

    def __init__(self, message: str, allowed: str) -> None:
        super().__init__(message)
        self.allowed = allowed

    @property
    def headers(self) -> dict[str, str]:
        return {"allow": self.allowed}


class RequestTooLarge(ThreadgateError):
    status = 413
    error_type = "request_too_large"


class RateLimited(ThreadgateError):
    status = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, retry_after_s: int = 1, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after_s)}


class StoreUnavailable(ThreadgateError):
    """A store (MongoDB, Redis, Milvus) did not answer; the request fails closed."""

    status = 503
    error_type = "api_error"


class UpstreamError(ThreadgateError):
    """The model provider failed after retries, or answered with something unusable."""

    status = 502
    error_type = "api_error"

    def __init__(self, message: str, upstream_status: int | None = None, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.upstream_status = upstream_status


class UpstreamRateLimited(UpstreamError):
    status = 429
    error_type = "rate_limit_error"

    @property
    def headers(self) -> dict[str, str]:
        return {"retry-after": "1"}


class UpstreamOverloaded(UpstreamError):
    status = 529
    error_type = "overloaded_error"


class UpstreamRejected(UpstreamError):
    """The provider refused the request itself (4xx other than 429)."""

    status = 400
    error_type = "invalid_request_error"


def _rebuild_error(cls: type[ThreadgateError], message: str) -> ThreadgateError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    return error


def upstream_error_for_status(status: int, message: str) -> UpstreamError:
    """The most specific class for a provider's final HTTP status."""
    if status == 429:
        return UpstreamRateLimited(message, upstream_status=status)
    if status in (503, 529):
        return UpstreamOverloaded(message, upstream_status=status)
    if status in (401, 403):
        # Our credentials are wrong: that is our failure, not the client's.
        return UpstreamError(message, upstream_status=status)
    if 400 <= status < 500:
        return UpstreamRejected(message, upstream_status=status)
    return UpstreamError(message, upstream_status=status)
