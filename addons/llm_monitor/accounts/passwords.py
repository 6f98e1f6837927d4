"""Dashboard passwords: salted scrypt hashes, in a self-describing string.

`scrypt$16384$8$1$<salt>$<hash>` (base64) keeps its parameters, so they can be raised later
without breaking the passwords already set.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

N, R, P = 2**14, 8, 1  # OWASP's minimum for scrypt; about 50 ms and 16 MB per check
MIN_LENGTH = 8
MAX_LENGTH = 1024  # longer is no password; don't spend scrypt on it


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8", errors="surrogateescape"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=2 * 128 * n * r * p,
        dklen=32,
    )


def check_strength(password: str) -> None:
    """ValueError saying why a new password is refused."""
    if len(password) < MIN_LENGTH:
        raise ValueError(f"a password needs at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise ValueError(f"a password has at most {MAX_LENGTH} characters")


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    return f"scrypt${N}${R}${P}${_b64(salt)}${_b64(_scrypt(password, salt, N, R, P))}"


# Checked against when the email is unknown, so that a wrong email costs as long as a
# wrong password and response times do not tell which emails have a login.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


def verify_password(password: str, stored: str | None) -> bool:
    """Whether `password` matches `stored`; False for a missing or malformed hash."""
    if len(password) > MAX_LENGTH:
        return False
    try:
        scheme, n, r, p, salt, expected = (stored or _DUMMY_HASH).split("$")
        if scheme != "scrypt":
            return False
        actual = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return stored is not None and hmac.compare_digest(actual, base64.b64decode(expected))
