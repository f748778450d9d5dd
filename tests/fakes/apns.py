"""A fake APNs: a real HTTP/2 server (``h2`` on asyncio) over TLS on 127.0.0.1.

Its certificate is issued at start by a throwaway CA (``ca_file`` is what the channel must
trust). Like Apple it verifies the provider token exactly — ES256 signature with the team's
public key, ``kid``, ``iss``, ``iat`` at most an hour old and not in the future, a new token
on a connection at most every 20 minutes — and the ``apns-*`` headers, and answers errors with
Apple's status codes and ``{"reason": ...}`` bodies. Accepted pushes are recorded in
``messages``; requests that fail verification are answered and counted in ``rejected``.
``script(token, ...)`` makes the next requests to a device token answer scripted errors (or
``DROP`` the connection after reading the request, which still records it: the push may have
gone out).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import ipaddress
import json
import re
import shutil
import ssl
import tempfile
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import SecretStr

from notifier.clock import Clock, SystemClock
from notifier.settings import ApnsSettings

TOKEN_MAX_AGE = 3600
TOKEN_MIN_UPDATE_INTERVAL = 20 * 60
PUSH_TYPES = {"alert", "background", "location", "voip", "complication", "fileprovider", "mdm"} | {
    "liveactivity",
    "pushtotalk",
    "widgets",
    "controls",
}
DEVICE_TOKEN = re.compile(r"[0-9a-fA-F]{64,200}")
UUID_FORM = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


@dataclass(frozen=True)
class Reply:
    """A scripted answer: an APNs error status and reason (plus extra response headers)."""

    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)


DROP = Reply(0, "drop the connection after reading the request")
UNREGISTERED = Reply(410, "Unregistered")
BAD_DEVICE_TOKEN = Reply(400, "BadDeviceToken")
TOO_MANY_REQUESTS = Reply(429, "TooManyRequests")
SERVICE_UNAVAILABLE = Reply(503, "ServiceUnavailable")
EXPIRED_PROVIDER_TOKEN = Reply(403, "ExpiredProviderToken")


@dataclass
class Push:
    device_token: str
    headers: dict[str, str]
    payload: Any
    provider_token: str
    connection: int  # index into ApnsFake.alpn: which TLS connection carried it


@dataclass
class _TokenState:
    token: str
    since: float
    refused: bool = False


@dataclass
class _Answer:
    status: int
    reason: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def encode(self, apns_id: str) -> tuple[list[tuple[str, str]], bytes]:
        headers = [(":status", str(self.status)), ("apns-id", apns_id)]
        if self.status == 200:
            return headers, b""
        body = json.dumps({"reason": self.reason, **self.extra}).encode()
        headers += [("content-type", "application/json"), ("content-length", str(len(body)))]
        return headers + list(self.headers.items()), body


def _b64url_decode(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def _issue_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost it signed."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "notifier test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_path, cert_path, key_path


class _Stream:
    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self.headers = headers
        self.body = bytearray()


class _H2Connection(asyncio.Protocol):
    """One client connection: h2's state machine fed from the socket, answers written back."""

    def __init__(self, fake: ApnsFake) -> None:
        self.fake = fake
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self.receiving: dict[int, _Stream] = {}  # requests still arriving
        self.answering: set[int] = set()  # complete requests not yet answered
        self.transport: asyncio.Transport | None = None
        self.index = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        self.index = len(self.fake.alpn)
        self.fake.alpn.append(ssl_object.selected_alpn_protocol() if ssl_object else None)
        self.fake._transports.add(transport)
        self.h2.initiate_connection()
        # Apple allows up to 1,000 concurrent streams per connection.
        self.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000})
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.fake._transports.discard(self.transport)
        self.fake.in_flight -= len(self.answering)
        self.answering.clear()
        self.receiving.clear()

    def _flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:  # e.g. a client that speaks HTTP/1.1
            self._flush()
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived) and event.stream_id is not None:
                headers = [(str(k), str(v)) for k, v in event.headers or []]
                self.receiving[event.stream_id] = _Stream(headers)
            elif isinstance(event, h2.events.DataReceived) and event.stream_id is not None:
                stream = self.receiving.get(event.stream_id)
                if stream is not None:
                    stream.body += event.data or b""
                self.h2.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id is not None:
                self._request_complete(event.stream_id)
                if self.transport is None or self.transport.is_closing():
                    return
            elif isinstance(event, h2.events.StreamReset) and event.stream_id is not None:
                self.receiving.pop(event.stream_id, None)
                if event.stream_id in self.answering:
                    self.answering.discard(event.stream_id)
                    self.fake.in_flight -= 1
            elif isinstance(event, h2.events.ConnectionTerminated) and self.transport is not None:
                self._flush()
                self.transport.close()
                return
        self._flush()

    def _request_complete(self, stream_id: int) -> None:
        stream = self.receiving.pop(stream_id)
        answer = self.fake._answer(stream.headers, bytes(stream.body), self.index)
        if answer is DROP:
            self.fake.dropped += 1
            if self.transport is not None:
                self.transport.abort()
            return
        self.answering.add(stream_id)
        self.fake.in_flight += 1
        self.fake.max_in_flight = max(self.fake.max_in_flight, self.fake.in_flight)
        apns_id = dict(stream.headers).get("apns-id") or str(uuid.uuid4())
        if self.fake.delay:
            loop = asyncio.get_running_loop()
            loop.call_later(self.fake.delay, self._respond, stream_id, answer, apns_id)
        else:
            self._respond(stream_id, answer, apns_id)

    def _respond(self, stream_id: int, answer: _Answer | Reply, apns_id: str) -> None:
        if stream_id not in self.answering:
            return  # reset by the client, or the connection is gone
        self.answering.discard(stream_id)
        self.fake.in_flight -= 1
        if isinstance(answer, Reply):
            extra = {"timestamp": int(self.fake.clock.time() * 1000)} if answer.status == 410 else {}
            answer = _Answer(answer.status, answer.reason, answer.headers, extra)
        headers, body = answer.encode(apns_id)
        try:
            self.h2.send_headers(stream_id, headers, end_stream=not body)
            if body:
                self.h2.send_data(stream_id, body, end_stream=True)
        except h2.exceptions.ProtocolError:
            return
        self._flush()


class ApnsFake:
    """The fake APNs endpoint. ``clock`` is what it checks ``iat`` against (share the channel's)."""

    def __init__(self, clock: Clock | None = None, delay: float = 0.0) -> None:
        self.clock = clock or SystemClock()
        self.delay = delay  # seconds before each answer, so concurrent streams overlap
        self.team_id = "TEAM4TESTS"
        self.key_id = "KEY4TESTS1"
        self.topic = "org.example.notifier"
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.public_key = self._key.public_key()
        self.messages: list[Push] = []
        self.rejected = 0
        self.rejections: list[str] = []  # the reason of each rejected request
        self.dropped = 0
        self.alpn: list[str | None] = []  # the ALPN protocol of each TLS connection, in order
        self.in_flight = 0
        self.max_in_flight = 0
        self.accepted_tokens: dict[str, float] = {}  # provider token -> when first accepted
        self._latest: dict[int, _TokenState] = {}  # per connection: its current provider token
        self._script: dict[str, list[Reply]] = defaultdict(list)
        self._transports: set[asyncio.Transport] = set()
        self._server: asyncio.Server | None = None
        self._dir: Path | None = None
        self.ca_file = ""
        self.port = 0

    # -- the test-facing API -------------------------------------------------------------
    def key_p8(self) -> str:
        """The team's auth key as Apple hands it out: a PKCS#8 PEM (.p8)."""
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def settings_overrides(self) -> dict[str, Any]:
        return {
            "apns": ApnsSettings(
                key_p8=SecretStr(self.key_p8()),
                key_id=self.key_id,
                team_id=self.team_id,
                topic=self.topic,
                base_url=self.base_url,
                ca_file=self.ca_file,
            )
        }

    def good_target(self) -> str:
        return "a1b2c3d4" * 8

    def script(self, device_token: str, *replies: Reply) -> None:
        """Answer the next requests to ``device_token`` with ``replies``, in turn (then 200)."""
        self._script[device_token.lower()].extend(replies)

    async def start(self) -> ApnsFake:
        self._dir = Path(tempfile.mkdtemp(prefix="apns-fake-"))
        ca_path, cert_path, key_path = _issue_certificates(self._dir)
        self.ca_file = str(ca_path)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert_path, key_path)
        context.set_alpn_protocols(["h2"])
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _H2Connection(self), "127.0.0.1", 0, ssl=context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        for transport in list(self._transports):
            transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    # -- verification, as APNs does it ----------------------------------------------------
    def _reject(self, status: int, reason: str) -> _Answer:
        self.rejected += 1
        self.rejections.append(reason)
        return _Answer(status, reason)

    def _check_provider_token(self, authorization: str | None, connection: int) -> _Answer | str:
        """The provider token if it is valid, else the 403 (or 429) APNs would answer."""
        if not authorization:
            return self._reject(403, "MissingProviderToken")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or token.count(".") != 2:
            return self._reject(403, "InvalidProviderToken")
        header_b64, claims_b64, signature_b64 = token.split(".")
        try:
            header = json.loads(_b64url_decode(header_b64))
            claims = json.loads(_b64url_decode(claims_b64))
            signature = _b64url_decode(signature_b64)
        except (ValueError, binascii.Error):
            return self._reject(403, "InvalidProviderToken")
        if not isinstance(header, dict) or not isinstance(claims, dict):
            return self._reject(403, "InvalidProviderToken")
        if header.get("alg") != "ES256" or header.get("kid") != self.key_id:
            return self._reject(403, "InvalidProviderToken")
        if claims.get("iss") != self.team_id or type(claims.get("iat")) is not int:
            return self._reject(403, "InvalidProviderToken")
        if len(signature) != 64:
            return self._reject(403, "InvalidProviderToken")
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        try:
            self.public_key.verify(der, f"{header_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return self._reject(403, "InvalidProviderToken")
        now = self.clock.time()
        if claims["iat"] > now:
            return self._reject(403, "InvalidProviderToken")
        if now - claims["iat"] > TOKEN_MAX_AGE:
            self._refuse(token, connection)
            return self._reject(403, "ExpiredProviderToken")
        latest = self._latest.get(connection)
        if latest is None or latest.token != token:
            # Like APNs, per connection: a new token at most every 20 minutes, unless the
            # previous one was refused (expired or invalid).
            if latest is not None and not latest.refused and now - latest.since < TOKEN_MIN_UPDATE_INTERVAL:
                return self._reject(429, "TooManyProviderTokenUpdates")
            self._latest[connection] = _TokenState(token, now)
        self.accepted_tokens.setdefault(token, now)
        return token

    def _refuse(self, token: str, connection: int) -> None:
        latest = self._latest.get(connection)
        if latest is not None and latest.token == token:
            latest.refused = True

    def _answer(self, header_list: list[tuple[str, str]], body: bytes, connection: int) -> _Answer | Reply:
        names = [name for name, _ in header_list]
        if len(names) != len(set(names)):
            return self._reject(400, "DuplicateHeaders")
        headers = dict(header_list)
        if headers.get(":method") != "POST":
            return self._reject(405, "MethodNotAllowed")
        path = headers.get(":path", "")
        if not path.startswith("/3/device/"):
            return self._reject(404, "BadPath")
        device_token = path.removeprefix("/3/device/")
        provider_token = self._check_provider_token(headers.get("authorization"), connection)
        if isinstance(provider_token, _Answer):
            return provider_token
        if "apns-topic" not in headers:
            return self._reject(400, "MissingTopic")
        if headers["apns-topic"] != self.topic:
            return self._reject(400, "TopicDisallowed")
        if headers.get("apns-push-type") not in PUSH_TYPES:
            return self._reject(400, "InvalidPushType")
        if headers.get("apns-priority", "10") not in ("1", "5", "10"):
            return self._reject(400, "BadPriority")
        if not headers.get("apns-expiration", "0").isdigit():
            return self._reject(400, "BadExpirationDate")
        if len(headers.get("apns-collapse-id", "").encode()) > 64:
            return self._reject(400, "BadCollapseId")
        if "apns-id" in headers and not UUID_FORM.fullmatch(headers["apns-id"]):
            return self._reject(400, "BadMessageId")
        if not body:
            return self._reject(400, "PayloadEmpty")
        if len(body) > 4096:
            return self._reject(413, "PayloadTooLarge")
        if not device_token:
            return self._reject(400, "MissingDeviceToken")
        if not DEVICE_TOKEN.fullmatch(device_token) or len(device_token) % 2:
            return self._reject(400, "BadDeviceToken")
        script = self._script.get(device_token.lower())
        if script:
            reply = script.pop(0)
            if reply is DROP:
                self.messages.append(Push(device_token, headers, _json(body), provider_token, connection))
            elif reply.reason == "ExpiredProviderToken":
                self._refuse(provider_token, connection)
            return reply
        self.messages.append(Push(device_token, headers, _json(body), provider_token, connection))
        return _Answer(200)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None  # APNs documents no reason for malformed JSON; tests see None
