"""Password hashes of `cellctl serve`'s users file: scrypt, with a fresh salt, its cost
recorded in the hash and bounded when read back."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import unicodedata
from dataclasses import dataclass

__all__ = ["DEFAULT_N", "checkable", "hash_password", "unmatchable_hash", "verify_password"]

#: scrypt's cost parameters for new hashes: 16 MiB and about 50 ms a hash.
DEFAULT_N = 2**14
_R = 8
_P = 1
_SALT_BYTES = 16
_KEY_BYTES = 32
#: The most memory a stored hash may make verification use (128·r·N bytes): a users file
#: cannot make a login take gigabytes.
_MAX_MEMORY = 64 * 1024 * 1024
_MAX_P = 16
_SCHEME = "scrypt"


@dataclass(frozen=True)
class _Hash:
    """A stored hash taken apart: scrypt's parameters, the salt and the derived key."""

    n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    def text(self) -> str:
        """The hash as the users file stores it: scrypt$N$r$p$<salt b64>$<key b64>."""
        salt = base64.b64encode(self.salt).decode("ascii")
        key = base64.b64encode(self.key).decode("ascii")
        return f"{_SCHEME}${self.n}${self.r}${self.p}${salt}${key}"


def _derive(password: str, n: int, r: int, p: int, salt: bytes, length: int) -> bytes:
    # NFC: the same password typed on two systems that compose accents differently matches.
    secret = unicodedata.normalize("NFC", password).encode("utf-8")
    maxmem = 128 * r * (n + p + 2) + 1024 * 1024  # OpenSSL's own need, and some room
    return hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=length)


def _parse_hash(stored: str) -> _Hash | None:
    """The parts of a stored hash, or None when it is not one this module can check (within
    bounds of cost, salt and key length)."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != _SCHEME:
        return None
    try:
        n, r, p = (int(part, 10) for part in parts[1:4] if part.isdigit())
        salt = base64.b64decode(parts[4], validate=True)
        key = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error):  # too few numbers, or not base64
        return None
    power_of_two = n > 1 and n & (n - 1) == 0
    if not (power_of_two and r >= 1 and 1 <= p <= _MAX_P and 128 * r * n <= _MAX_MEMORY):
        return None
    if len(salt) < 8 or not 16 <= len(key) <= 64:
        return None
    return _Hash(n, r, p, salt, key)


def hash_password(password: str, *, n: int = DEFAULT_N) -> str:
    """The scrypt hash of a password, with a fresh salt, as the users file stores it; `n` is
    scrypt's cost (a power of two; the hash records it)."""
    salt = secrets.token_bytes(_SALT_BYTES)
    return _Hash(n, _R, _P, salt, _derive(password, n, _R, _P, salt, _KEY_BYTES)).text()


def verify_password(stored: str, password: str) -> bool:
    """True when `password` is the one `stored` was made from; False for any other, and for a
    stored hash that is malformed (never raises)."""
    parsed = _parse_hash(stored)
    if parsed is None:
        return False
    try:
        key = _derive(password, parsed.n, parsed.r, parsed.p, parsed.salt, len(parsed.key))
    except (ValueError, MemoryError):  # OpenSSL refused the parameters after all
        return False
    return hmac.compare_digest(key, parsed.key)


def checkable(stored: str) -> bool:
    """True when `stored` is a hash this module can check (scrypt$N$r$p$salt$key, in bounds)."""
    return _parse_hash(stored) is not None


def unmatchable_hash(like: str | None) -> str:
    """A hash no password matches, of the same cost as the stored hash `like` (DEFAULT_N's when
    None or unreadable): checking a password against it takes as long."""
    parsed = _parse_hash(like) if like is not None else None
    n, r, p = (parsed.n, parsed.r, parsed.p) if parsed is not None else (DEFAULT_N, _R, _P)
    return _Hash(n, r, p, bytes(_SALT_BYTES), bytes(_KEY_BYTES)).text()
