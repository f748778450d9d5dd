"""A TCP proxy on 127.0.0.1 in front of a real server (PostgreSQL, Redis …) that a test can cut.

``cut()`` is what a crashed server looks like from the client: every open connection is reset and
new ones are refused (nothing listens on the port). ``restore()`` listens again on the same port,
so the client's URL stays valid, as after a restart. ``freeze()`` is a black hole: the open
connections stay open but nothing more passes on them in either direction (a hung server, a
firewall or NAT that lost the connection's state), while new connections work. ``black_hole()``
goes further: new connections are accepted and then never answered either, until ``restore()``
(a server that accepts and hangs). ``latency`` delays every chunk the server sends back (a
server answering slowly: with one round trip per statement, seconds per statement). Bytes are
passed through untouched.

    proxy = await FaultProxy("127.0.0.1", upstream_port).start()
    settings = settings.model_copy(update={"database_url": proxy.url_for(settings.database_url)})
    await proxy.cut(); ...; await proxy.restore()
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit, urlunsplit

CHUNK = 64 * 1024


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.accepted = 0  # connections accepted so far
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._frozen: set[asyncio.StreamWriter] = set()  # writers whose bytes are dropped
        self._holing = False  # black hole: new connections are accepted and never answered
        self._held: set[asyncio.StreamWriter] = set()
        self.latency = 0.0  # seconds added before each chunk from the server reaches the client

    @classmethod
    def for_url(cls, url: str) -> FaultProxy:
        parts = urlsplit(url)
        assert parts.hostname and parts.port, url
        return cls(parts.hostname, parts.port)

    def url_for(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        user = f"{parts.username}@" if parts.username else ""
        return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{self.port}"))

    @property
    def is_cut(self) -> bool:
        return self._server is None

    async def start(self) -> FaultProxy:
        await self._listen()
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True, backlog=256
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Refuse new connections and reset every open one."""
        self.cuts += 1
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            transport = writer.transport
            transport.abort()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        self._writers.clear()
        for writer in list(self._held):
            writer.transport.abort()
        self._held.clear()

    def freeze(self) -> None:
        """Silently drop everything on the connections open now; new ones pass normally."""
        self._frozen |= self._writers

    def black_hole(self) -> None:
        """Accept every connection and answer nothing, on the open ones and on new ones."""
        self._holing = True
        self.freeze()

    async def restore(self) -> None:
        """Listen again after ``cut``; after ``black_hole``, pass new connections again (the
        connections it swallowed stay silent: their client must give up on them)."""
        self._holing = False
        if self._server is None:
            await self._listen()

    async def stop(self) -> None:
        await self.cut()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._holing:
            self._held.add(client_w)
            try:
                with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                    while await client_r.read(CHUNK):
                        pass  # swallowed
            finally:
                self._held.discard(client_w)
                client_w.transport.abort()
            return
        try:
            up_r, up_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.transport.abort()
            return
        if self.is_cut:  # cut while this connection was being set up
            client_w.transport.abort()
            up_w.transport.abort()
            return
        self._writers |= {client_w, up_w}
        pipes = [
            asyncio.create_task(self._pipe(client_r, up_w)),
            asyncio.create_task(self._pipe(up_r, client_w, answers=True)),
        ]
        self._pipes.update(pipes)
        try:
            # When either side ends, end both.
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            self._pipes.difference_update(pipes)
            for w in (client_w, up_w):
                self._writers.discard(w)
                self._frozen.discard(w)
                w.transport.abort()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answers: bool = False
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(CHUNK):
                if answers and self.latency:
                    await asyncio.sleep(self.latency)
                if writer in self._frozen:
                    continue
                writer.write(data)
                await writer.drain()
