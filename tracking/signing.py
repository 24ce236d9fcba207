"""`Porchlight-Signature: t=<unix seconds>,v1=<hex>`: HMAC-SHA256 over `"<t>." + body`.

Used both ways: to verify what the routing backend sends, and to sign what we send it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

HEADER = "Porchlight-Signature"
_HEX64 = re.compile(r"[0-9a-f]{64}")
# A header is a handful of entries; past this it is not a signature but an attack on our CPU.
MAX_HEADER_LENGTH = 2048
MAX_SIGNATURES = 8


class SignatureError(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class ParsedSignature:
    timestamp: int
    signatures: tuple[str, ...]


def compute(*, secret: str, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(*, secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The header value for `body`."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={compute(secret=secret, timestamp=t, body=body)}"


def parse(header: str | None) -> ParsedSignature:
    if not header:
        raise SignatureError("missing_signature", f"The {HEADER} header is required.")
    if len(header) > MAX_HEADER_LENGTH:
        raise SignatureError("invalid_signature", f"The {HEADER} header is too long.")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureError("invalid_signature", f"Malformed {HEADER} header.")
        if key == "t":
            if timestamp is not None or not value.isascii() or not value.isdigit() or len(value) > 12:
                raise SignatureError("invalid_signature", "t must be one whole number of seconds.")
            timestamp = int(value)
        elif key == "v1":
            if not _HEX64.fullmatch(value):
                raise SignatureError("invalid_signature", "v1 must be 64 lowercase hex digits.")
            signatures.append(value)
        # Other schemes (v0, v2...) are ignored, as with Stripe and Standard Webhooks.
    if timestamp is None or not signatures:
        raise SignatureError("invalid_signature", f"{HEADER} needs t= and at least one v1=.")
    if len(signatures) > MAX_SIGNATURES:
        raise SignatureError("invalid_signature", f"At most {MAX_SIGNATURES} v1 signatures.")
    return ParsedSignature(timestamp=timestamp, signatures=tuple(signatures))


def verify(
    *, header: str | None, body: bytes, secrets: Iterable[str], tolerance: int, now: float | None = None
) -> None:
    """Raise SignatureError unless one v1 of `header` matches one of `secrets` for `body`."""
    parsed = parse(header)
    current = time.time() if now is None else now
    if abs(current - parsed.timestamp) > tolerance:
        raise SignatureError("stale_signature", f"t is more than {tolerance} s away from the server's clock.")
    matched = False
    # An empty secret (a stray comma in the setting) would let anyone sign: never use one.
    for secret in filter(None, secrets):
        expected = compute(secret=secret, timestamp=parsed.timestamp, body=body)
        for candidate in parsed.signatures:
            # No early exit: every comparison runs, in constant time.
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureError("invalid_signature", "No signature matches this body.")
