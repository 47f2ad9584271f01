"""keygate's key format (docs/behaviour.md §1), re-implemented independently for tests.

    {prefix}_{environment}_{token}
    token = R (32 base58 chars, Bitcoin alphabet) + C
    C     = CRC32 (IEEE) of R's ASCII bytes as exactly 6 base58 digits,
            most significant first, zero-padded with '1' (base58's zero)
"""
from __future__ import annotations

import re
import secrets
import zlib

BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
CHECKSUM_LEN = 6
RANDOM_LEN = 32

_B58_CLASS = "[1-9A-HJ-NP-Za-km-z]"
KEY_PREFIX_RE = re.compile(rf"^[a-z][a-z0-9]{{0,15}}_[a-z0-9]+_{_B58_CLASS}{{8}}$")


def b58_fixed(n: int, width: int = CHECKSUM_LEN) -> str:
    """n as exactly `width` base58 digits, most significant first."""
    if n < 0 or n >= 58 ** width:
        raise ValueError(f"{n} does not fit in {width} base58 digits")
    out = []
    for _ in range(width):
        n, r = divmod(n, 58)
        out.append(BASE58[r])
    return "".join(reversed(out))


def checksum(random_part: str) -> str:
    return b58_fixed(zlib.crc32(random_part.encode("ascii")) & 0xFFFFFFFF)


def random_part(length: int = RANDOM_LEN) -> str:
    return "".join(secrets.choice(BASE58) for _ in range(length))


def make_token(length: int = RANDOM_LEN) -> str:
    r = random_part(length)
    return r + checksum(r)


def make_key(environment: str = "live", prefix: str = "sk", length: int = RANDOM_LEN) -> str:
    """A well-formed key with a valid checksum that keygate never issued."""
    return f"{prefix}_{environment}_{make_token(length)}"


def split_key(key: str) -> tuple[str, str, str]:
    prefix, env, token = key.split("_", 2)
    return prefix, env, token


def is_well_formed(key: str, prefix: str = "sk", length: int = RANDOM_LEN) -> bool:
    try:
        p, env, token = split_key(key)
    except ValueError:
        return False
    if p != prefix or not env or len(token) != length + CHECKSUM_LEN:
        return False
    if any(c not in BASE58 for c in token):
        return False
    return checksum(token[:length]) == token[length:]


def key_prefix_of(key: str) -> str:
    """The display prefix keygate stores: prefix_env_ + first 8 token chars."""
    p, env, token = split_key(key)
    return f"{p}_{env}_{token[:8]}"


def tamper(key: str, index: int | None = None) -> str:
    """The key with one token character replaced by another base58 character
    (CRC32 catches every single-character change)."""
    p, env, token = split_key(key)
    i = len(token) // 2 if index is None else index
    c = token[i]
    repl = BASE58[(BASE58.index(c) + 1) % len(BASE58)]
    return f"{p}_{env}_{token[:i]}{repl}{token[i + 1:]}"
