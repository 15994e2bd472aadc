"""Bech32 (BIP 173), as age encodes its keys: ``age1...`` recipients and
``AGE-SECRET-KEY-1...`` identities.  age allows strings longer than BIP 173's 90
characters and never mixes case within one string."""
from __future__ import annotations

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_REV = {c: i for i, c in enumerate(CHARSET)}
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _GEN[i]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(x) >> 5 for x in hrp] + [0] + [ord(x) & 31 for x in hrp]


def _convert(data, frm: int, to: int, pad: bool) -> list[int]:
    acc = bits = 0
    out = []
    maxv = (1 << to) - 1
    for v in data:
        if v >> frm:
            raise ValueError("bad data value")
        acc = (acc << frm) | v
        bits += frm
        while bits >= to:
            bits -= to
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (to - bits)) & maxv)
    elif bits >= frm or ((acc << (to - bits)) & maxv):
        raise ValueError("non-zero padding")
    return out


def encode(hrp: str, data: bytes) -> str:
    values = _convert(data, 8, 5, True)
    chk = _polymod(_hrp_expand(hrp) + values + [0] * 6) ^ 1
    values += [(chk >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(CHARSET[v] for v in values)


def decode(text: str) -> tuple[str, bytes]:
    """(human-readable part, lower case; data).  ValueError when malformed."""
    if text.lower() != text and text.upper() != text:
        raise ValueError("mixed case")
    s = text.lower()
    pos = s.rfind("1")
    if pos < 1 or pos + 7 > len(s):
        raise ValueError("no separator or too short")
    hrp = s[:pos]
    if any(not 33 <= ord(c) <= 126 for c in hrp):
        raise ValueError("bad character in the prefix")
    try:
        values = [_REV[c] for c in s[pos + 1:]]
    except KeyError:
        raise ValueError("bad character") from None
    if _polymod(_hrp_expand(hrp) + values) != 1:
        raise ValueError("bad checksum")
    return hrp, bytes(_convert(values[:-6], 5, 8, False))
