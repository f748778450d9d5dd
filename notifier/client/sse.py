"""Server-Sent Events, read: the event-stream format (WHATWG HTML, "server-sent events") parsed
line by line into events. Pure; the client (and the tests) feed it the lines of a response."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ServerEvent:
    event: str
    data: str
    id: str | None  # the last event id seen on the stream (what Last-Event-ID resumes from)


@dataclass(slots=True)
class EventParser:
    """Feed it lines (without their line break); an empty line ends an event."""

    last_id: str | None = None
    comments: int = 0  # ": ..." lines seen (heartbeats)
    _event: str = ""
    _data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> ServerEvent | None:
        if not line:
            if not self._data:
                self._event = ""
                return None
            ev = ServerEvent(self._event or "message", "\n".join(self._data), self.last_id)
            self._event, self._data = "", []
            return ev
        if line.startswith(":"):
            self.comments += 1
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\x00" not in value:
            self.last_id = value
        return None


async def events(
    lines: AsyncIterable[bytes], parser: EventParser | None = None
) -> AsyncIterator[ServerEvent]:
    """The events of a stream of raw lines (an aiohttp response's ``content``)."""
    parser = parser or EventParser()
    async for raw in lines:
        ev = parser.feed(raw.decode("utf-8").rstrip("\r\n"))
        if ev is not None:
            yield ev
