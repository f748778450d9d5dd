"""What the client raises. Every answer the API gives as ``application/problem+json`` becomes an
``ApiError`` carrying that problem; the transient ones (429, 503) were retried first::

    ClientError
    ├── TransportError        the server could not be reached, or the connection broke
    └── ApiError              the API answered with a problem (.status, .problem, .errors)
        ├── BadRequest        400
        ├── Unauthorized      401
        ├── Forbidden         403
        ├── NotFound          404 (also: outside the caller's units)
        ├── Conflict          409 (e.g. an Idempotency-Key still in flight)
        ├── Invalid           422: .errors names each bad field as sent
        └── Transient         still failing after the retries
            ├── RateLimited   429 (.retry_after)
            └── Unavailable   503 (.retry_after)
"""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """Anything the client raises."""


class TransportError(ClientError):
    pass


class ApiError(ClientError):
    def __init__(self, status: int, problem: dict[str, Any], retry_after: float | None = None) -> None:
        self.status = status
        self.problem = problem
        self.retry_after = retry_after
        title = problem.get("title") or f"HTTP {status}"
        detail = problem.get("detail")
        super().__init__(f"{status} {title}" + (f": {detail}" if detail else ""))

    @property
    def title(self) -> str:
        return str(self.problem.get("title", ""))

    @property
    def detail(self) -> str | None:
        detail = self.problem.get("detail")
        return None if detail is None else str(detail)

    @property
    def errors(self) -> list[dict[str, str]]:
        """One per bad field: {"field": as the caller wrote it, "message": ...}."""
        return list(self.problem.get("errors") or [])


class BadRequest(ApiError):
    pass


class Unauthorized(ApiError):
    pass


class Forbidden(ApiError):
    pass


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


class Invalid(ApiError):
    pass


class Transient(ApiError):
    pass


class RateLimited(Transient):
    pass


class Unavailable(Transient):
    pass


BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: Invalid,
    429: RateLimited,
    503: Unavailable,
}


def api_error(status: int, problem: dict[str, Any], retry_after: float | None = None) -> ApiError:
    return BY_STATUS.get(status, ApiError)(status, problem, retry_after)
