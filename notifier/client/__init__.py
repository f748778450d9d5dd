"""notifier.client: a typed async client for the notifier API (see notifier/client/client.py).

from notifier.client import Client
from notifier.client.models import Audience, NoticeIn

async with Client("http://127.0.0.1:8080", token) as api:
    notice = await api.send(NoticeIn(kind="ding", title="Muster", body="Report in",
                                     audience=Audience(units=["county"])))
    async for update in api.stream(notice.id):
        print(update.data.counts.read, "/", update.data.counts.recipients)
"""

from notifier.client.client import Client, Retry, Update
from notifier.client.errors import (
    ApiError,
    BadRequest,
    ClientError,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    Transient,
    TransportError,
    Unauthorized,
    Unavailable,
)

__all__ = [
    "ApiError",
    "BadRequest",
    "Client",
    "ClientError",
    "Conflict",
    "Forbidden",
    "Invalid",
    "NotFound",
    "RateLimited",
    "Retry",
    "Transient",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "Update",
]
