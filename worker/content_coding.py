"""Request bodies sent with a content coding (RFC 9110 §8.4): gzip and deflate, decoded under a cap.

tritonclient compresses request bodies when asked (`request_compression_algorithm`), and Triton
decodes them. The cap applies to what the body inflates to, not to what was sent, so a few KB of
gzip cannot become gigabytes in memory: inflation stops one byte past the limit.
"""

from __future__ import annotations

import zlib

from worker.errors import InvalidInput, PayloadTooLarge, UnsupportedEncoding

__all__ = ["decode_content"]

# zlib's window bits per coding: gzip's wrapper, and "deflate", which HTTP defines as the zlib
# format (RFC 9110 §8.4.1.2; tritonclient sends `zlib.compress`).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def decode_content(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """`body` decoded from the coding its `Content-Encoding` header names; as it is without one.

    UnsupportedEncoding (415) for a coding other than gzip, deflate or identity (or a chain of
    them), InvalidInput (400) for data that is not what the coding says, PayloadTooLarge (413)
    once the decoded body passes `max_bytes`.
    """
    if encoding is None:
        return body
    # Codings are listed in the order they were applied; decode the last first.
    for coding in reversed([c.strip().lower() for c in encoding.split(",")]):
        if coding in ("", "identity"):
            continue
        wbits = _WBITS.get(coding)
        if wbits is None:
            raise UnsupportedEncoding(f"Content-Encoding {encoding[:64]!r} is not supported: use gzip or deflate")
        body = _inflate(body, wbits, coding, max_bytes)
    return body


# A gzip body may be several members one after the other (RFC 1952 §2.2); clients send one. Each
# member's rest of the body is copied (`unused_data`), so many tiny members cost quadratic time.
_MAX_MEMBERS = 16


def _inflate(data: bytes, wbits: int, coding: str, max_bytes: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        if len(parts) == _MAX_MEMBERS:
            raise InvalidInput(f"the {coding} body has more than {_MAX_MEMBERS} members")
        inflater = zlib.decompressobj(wbits)
        try:
            part = inflater.decompress(data, max_bytes - size + 1)
        except zlib.error as exc:
            raise InvalidInput(f"the body is not valid {coding} data ({exc})") from None
        size += len(part)
        if size > max_bytes:
            raise PayloadTooLarge(f"the body decoded from {coding} is over the limit of {max_bytes} bytes")
        parts.append(part)
        if not inflater.eof:
            raise InvalidInput(f"the {coding} body ends before its data does")
        data = inflater.unused_data
        if not data:
            return parts[0] if len(parts) == 1 else b"".join(parts)
        if wbits != _WBITS["gzip"]:
            raise InvalidInput(f"the body has {len(data)} bytes after the end of its {coding} data")
