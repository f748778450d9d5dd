"""DingTalk's HTTP event push envelope (pure): signature, AES-CBC encryption, the reply.

A push is ``POST ?msg_signature=&timestamp=&nonce=`` with body ``{"encrypt": ...}``:

* signature = hex SHA-1 of the sorted concatenation of token, timestamp, nonce and encrypt;
* key = base64-decode(EncodingAESKey + "="), 32 bytes; AES-256-CBC with IV = the key's first 16
  bytes; PKCS#7 padding to 32-byte blocks;
* plaintext = 16 random bytes + 4-byte big-endian length + message + the app key (the receiver:
  a message for another app is refused).

The answer to every event is the encrypted string ``success`` in the same envelope
(``msg_signature``, ``timeStamp``, ``nonce``, ``encrypt``); DingTalk retries until it gets one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import struct
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from notifier.channels.base import InvalidSignature

BLOCK = 32


class BadEnvelope(ValueError):
    """The push verified but cannot be read (wrong AES key, another app's message, not JSON)."""


def aes_key(encoding_aes_key: str) -> bytes:
    try:
        key = base64.b64decode(encoding_aes_key + "=", validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the DingTalk callback AES key must be 43 base64 characters") from None
    if len(key) != 32:
        raise ValueError("the DingTalk callback AES key must be 43 base64 characters (32 bytes)")
    return key


def signature(token: str, timestamp: str, nonce: str, encrypt: str) -> str:
    return hashlib.sha1("".join(sorted([token, timestamp, nonce, encrypt])).encode()).hexdigest()  # noqa: S324 - DingTalk's scheme


def verify(token: str, timestamp: str, nonce: str, encrypt: str, given: str) -> None:
    if not hmac.compare_digest(signature(token, timestamp, nonce, encrypt), given.lower()):
        raise InvalidSignature("DingTalk event signature did not verify")


def encrypt(key: bytes, receiver: str, message: str, random16: bytes | None = None) -> str:
    data = message.encode()
    plain = (random16 or os.urandom(16)) + struct.pack(">I", len(data)) + data + receiver.encode()
    pad = BLOCK - len(plain) % BLOCK
    plain += bytes([pad]) * pad
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()


def decrypt(key: bytes, receiver: str, text: str) -> str:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadEnvelope("encrypt is not base64") from None
    if not raw or len(raw) % 16:
        raise BadEnvelope("encrypt is not whole AES blocks")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    plain = decryptor.update(raw) + decryptor.finalize()
    pad = plain[-1]
    if not 1 <= pad <= BLOCK or plain[-pad:] != bytes([pad]) * pad:
        raise BadEnvelope("bad padding (wrong AES key?)")
    plain = plain[:-pad]
    if len(plain) < 20:
        raise BadEnvelope("too short")
    (length,) = struct.unpack(">I", plain[16:20])
    body, tail = plain[20 : 20 + length], plain[20 + length :]
    if len(body) != length or not hmac.compare_digest(tail, receiver.encode()):
        raise BadEnvelope("not a message for this app (wrong AES key or app key?)")
    try:
        return body.decode()
    except UnicodeDecodeError:
        raise BadEnvelope("not UTF-8") from None


def reply(key: bytes, token: str, receiver: str, timestamp: str) -> bytes:
    """The encrypted ``success`` answer (JSON bytes)."""
    nonce = secrets.token_hex(8)
    sealed = encrypt(key, receiver, "success")
    envelope: dict[str, Any] = {
        "msg_signature": signature(token, timestamp, nonce, sealed),
        "timeStamp": timestamp,
        "nonce": nonce,
        "encrypt": sealed,
    }
    return json.dumps(envelope).encode()
