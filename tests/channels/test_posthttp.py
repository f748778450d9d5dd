"""The webhook channel's HTTP/1.1 client (notifier/channels/posthttp.py) against raw TCP servers
that answer byte for byte as scripted: framings (Content-Length, chunked, until close), kept-alive
connections reused, a connection the server closed while idle replaced, bodies beyond the cap
not read, answers that are not HTTP refused; a URL's credentials sent as Basic authorization; idle
connections beyond the per-host cap closed after a burst; and the same on uvloop."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable

import pytest
import uvloop

from notifier.channels.netguard import BlockedAddress
from notifier.channels.posthttp import PostClient, ProtocolError, ServerDisconnectedError
from tests.conftest import wait_until

# How a scripted server answers the n-th request (0-based) of a connection: bytes to write, and
# whether to close the connection afterwards.
Script = Callable[[int, bytes], tuple[bytes, bool]]


class Server:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.closed = 0  # connections the client closed (or that ended)
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                answer, close = self.script(n, request)
                n += 1
                writer.write(answer)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed += 1
            writer.close()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hook?x=1"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Script], Server]]:
    servers: list[Server] = []

    def make(script: Script) -> Server:
        servers.append(Server(script))
        return servers[-1]

    yield make
    for s in servers:
        await s.stop()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_a_kept_alive_connection_carries_every_request(serve: Callable[[Script], Server]) -> None:
    server = serve(lambda n, _: (OK, False))
    url = await server.start()
    client = PostClient(allow_private=True, max_body=1024)
    try:
        for i in range(5):
            answer = await client.post(url, {"webhook-id": f"msg_{i}"}, b'{"i":%d}' % i)
            assert answer.status == 200
    finally:
        await client.close()
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /hook?x=1 HTTP/1.1\r\n")
    assert b"\r\nhost: 127.0.0.1:" in first and b"\r\nwebhook-id: msg_0\r\n" in first
    assert first.endswith(b'content-length: 7\r\n\r\n{"i":0}')


@pytest.mark.parametrize(
    ("answer", "status", "retry_after"),
    [
        (b"HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n", 503, "7"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: v\r\n\r\n",
            200,
            None,
        ),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", 204, None),
        (b"HTTP/1.1 404 Not Found\r\ncontent-length: 5\r\n\r\nnope!", 404, None),
    ],
)
async def test_framings_are_read_to_their_end_and_the_connection_kept(
    serve: Callable[[Script], Server], answer: bytes, status: int, retry_after: str | None
) -> None:
    server = serve(lambda n, _: (answer if n == 0 else OK, False))
    url = await server.start()
    client = PostClient(allow_private=True, max_body=1024)
    try:
        got = await client.post(url, {}, b"{}")
        assert (got.status, got.retry_after) == (status, retry_after)
        assert (await client.post(url, {}, b"{}")).status == 200
    finally:
        await client.close()
    assert server.connections == 1


async def test_a_body_until_close_or_beyond_the_cap_ends_the_connection(
    serve: Callable[[Script], Server],
) -> None:
    answers = [
        (b"HTTP/1.1 200 OK\r\n\r\nthe body runs until the server closes", True),
        (b"HTTP/1.1 500 Oops\r\nContent-Length: 100000\r\n\r\n" + b"x" * 2000, False),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n" + b"y" * 2048 + b"\r\n", False),
        (b"HTTP/1.0 202 Accepted\r\nContent-Length: 0\r\n\r\n", False),
    ]
    i = iter(answers)
    server = serve(lambda n, _: next(i, (OK, False)))
    url = await server.start()
    client = PostClient(allow_private=True, max_body=1024)
    try:
        statuses = [(await client.post(url, {}, b"{}")).status for _ in range(len(answers))]
        assert statuses == [200, 500, 200, 202]
        assert (await asyncio.wait_for(client.post(url, {}, b"{}"), 5)).status == 200
    finally:
        await client.close()
    assert server.connections == len(answers) + 1  # none of those connections was reused


async def test_a_connection_the_server_closed_while_idle_is_replaced(
    serve: Callable[[Script], Server],
) -> None:
    server = serve(lambda n, _: (OK, True))  # answers, then closes without saying so
    url = await server.start()
    client = PostClient(allow_private=True, max_body=1024)
    try:
        assert (await client.post(url, {}, b"{}")).status == 200
        await asyncio.sleep(0.05)
        assert (await client.post(url, {}, b"{}")).status == 200
    finally:
        await client.close()
    assert server.connections == 2 and len(server.requests) == 2


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", ProtocolError),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", ServerDisconnectedError),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", ProtocolError),
        # chunk sizes are hex digits only: Python's int() would take these
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n\r\n", ProtocolError),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\nab\r\n0\r\n\r\n", ProtocolError),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1_0\r\n", ProtocolError),
        (b"", ServerDisconnectedError),
    ],
)
async def test_an_answer_that_is_not_http_or_cut_short_raises(
    serve: Callable[[Script], Server], answer: bytes, error: type[Exception]
) -> None:
    server = serve(lambda n, _: (answer, True))
    url = await server.start()
    client = PostClient(allow_private=True, max_body=1024)
    try:
        with pytest.raises(error):
            await asyncio.wait_for(client.post(url, {}, b"{}"), 5)
    finally:
        await client.close()


async def test_private_addresses_are_refused_unless_allowed() -> None:
    client = PostClient(allow_private=False, max_body=1024)
    try:
        with pytest.raises(BlockedAddress):
            await client.post("http://127.0.0.1:9/hook", {}, b"{}")
        with pytest.raises(BlockedAddress):
            await client.post("http://localhost:9/hook", {}, b"{}")
    finally:
        await client.close()


def test_the_client_runs_on_uvloop() -> None:
    """The workers run on uvloop, whose transports are not ``asyncio.Transport`` instances."""

    async def main() -> list[int]:
        server = Server(lambda n, _: (OK, False))
        url = await server.start()
        client = PostClient(allow_private=True, max_body=1024)
        try:
            return [(await client.post(url, {}, b"{}")).status for _ in range(3)]
        finally:
            await client.close()
            await server.stop()

    assert uvloop.run(main()) == [200, 200, 200]


async def test_a_name_is_resolved_and_each_address_tried(serve: Callable[[Script], Server]) -> None:
    """``localhost`` may resolve to ::1 first, where nothing listens: the next address is tried."""
    server = serve(lambda n, _: (OK, False))
    url = (await server.start()).replace("127.0.0.1", "localhost")
    client = PostClient(allow_private=True, max_body=1024)
    try:
        assert (await client.post(url, {}, b"{}")).status == 200
    finally:
        await client.close()
    assert b"\r\nhost: localhost:" in server.requests[0]


@pytest.mark.parametrize(
    "answer",
    [
        # Transfer-Encoding and Content-Length both: read as chunked, the connection not reused
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
        # chunked not the last coding (nor a look-alike): the body runs until the server closes
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\nabc",
        # several Transfer-Encoding headers are one list: gzip then chunked is chunked
    ],
)
async def test_doubtful_framings_end_the_connection(serve: Callable[[Script], Server], answer: bytes) -> None:
    server = serve(
        lambda n, _: (answer, n == 0 and b"Content-Length: 3" not in answer) if n == 0 else (OK, False)
    )
    url = await server.start()
    client = PostClient(allow_private=True, max_body=1024)
    try:
        assert (await asyncio.wait_for(client.post(url, {}, b"{}"), 5)).status == 200
        assert (await asyncio.wait_for(client.post(url, {}, b"{}"), 5)).status == 200
    finally:
        await client.close()
    assert server.connections == 2  # the first connection was not reused


async def test_transfer_encoding_headers_are_one_list(serve: Callable[[Script], Server]) -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer += b"2\r\nab\r\n0\r\n\r\n"
    server = serve(lambda n, _: (answer if n == 0 else OK, False))
    url = await server.start()
    client = PostClient(allow_private=True, max_body=1024)
    try:
        assert (await asyncio.wait_for(client.post(url, {}, b"{}"), 5)).status == 200
        assert (await asyncio.wait_for(client.post(url, {}, b"{}"), 5)).status == 200
    finally:
        await client.close()
    assert server.connections == 1  # chunked, read to its end: the connection kept


@pytest.mark.parametrize(
    ("userinfo", "credentials"),
    [
        ("hook-user:s3cr%3At%40x", b"hook-user:s3cr:t@x"),  # percent-decoded, ':' allowed in it
        ("%E5%BC%A0:p%C3%A4ss", "张:päss".encode()),  # UTF-8
        ("token", b"token:"),  # a user alone
        (":only-pass", b":only-pass"),
    ],
)
async def test_credentials_in_the_url_go_as_basic_authorization(
    serve: Callable[[Script], Server], userinfo: str, credentials: bytes
) -> None:
    """As aiohttp sent them; the request line and Host carry no trace of them."""
    server = serve(lambda n, _: (OK, False))
    url = (await server.start()).replace("http://", f"http://{userinfo}@")
    client = PostClient(allow_private=True, max_body=1024)
    try:
        assert (await client.post(url, {"webhook-id": "msg_1"}, b"{}")).status == 200
    finally:
        await client.close()
    head = server.requests[0].split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert head[0] == b"POST /hook?x=1 HTTP/1.1"
    assert head[1].startswith(b"host: 127.0.0.1:")
    assert head.count(b"authorization: Basic " + base64.b64encode(credentials)) == 1
    assert userinfo.encode() not in server.requests[0]
    assert credentials not in server.requests[0]  # only in base64


async def test_a_user_name_holding_a_colon_is_refused() -> None:
    client = PostClient(allow_private=True, max_body=1024)
    try:
        with pytest.raises(ValueError, match="user name"):
            await client.post("http://a%3Ab:c@127.0.0.1:9/hook", {}, b"{}")
    finally:
        await client.close()


async def test_after_a_burst_a_host_keeps_its_cap_of_idle_connections(
    serve: Callable[[Script], Server],
) -> None:
    server = serve(lambda n, _: (OK, False))
    url = await server.start()
    client = PostClient(allow_private=True, max_body=1024, idle_per_host=2, spare_seconds=0.2)
    try:
        for _ in range(3):  # bursts in a row (batches) reuse every connection: none opened again
            answers = await asyncio.gather(*(client.post(url, {}, b"{}") for _ in range(6)))
            assert [a.status for a in answers] == [200] * 6
            assert (server.connections, server.closed) == (6, 0)

        async def trimmed() -> bool:
            return server.closed >= 4

        await wait_until(trimmed, within=5)
        await asyncio.sleep(0.5)  # more sweeps: the two newest stay
        assert (server.connections, server.closed) == (6, 4)
        assert [(await client.post(url, {}, b"{}")).status for _ in range(2)] == [200, 200]
        assert server.connections == 6  # the kept two were reused
    finally:
        await client.close()


async def test_idle_connections_to_a_host_never_posted_to_again_are_closed(
    serve: Callable[[Script], Server],
) -> None:
    server = serve(lambda n, _: (OK, False))
    url = await server.start()
    client = PostClient(allow_private=True, max_body=1024, idle_seconds=0.3, spare_seconds=0.1)
    try:
        await asyncio.gather(*(client.post(url, {}, b"{}") for _ in range(3)))
        assert server.connections == 3

        async def all_closed() -> bool:
            return server.closed == 3

        await wait_until(all_closed, within=5)
    finally:
        await client.close()
