"""Ticket numbers: SRV-YYYYMMDD-NNNNN-XXX.

The three-character check code is a weighted sum modulo the prime 32749 over
every character of domain, date and sequence, written in Crockford base32.
With distinct consecutive weights and character values below the modulus, any
single substituted character changes the sum (w*d != 0 mod p) and so does any
swap of two adjacent different characters ((w1-w2)*(a-b) = ±(a-b) != 0 mod p).
A change inside the check code itself is caught because the encoding is
one-to-one; a swap across a dash breaks the fixed layout.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32
_VALUE = {c: i for i, c in enumerate(_ALPHABET)}
# What people mistype for the Crockford digits.
_ALIASES = str.maketrans({"O": "0", "I": "1", "L": "1"})
_MODULUS = 32749  # largest prime below 32**3
_CHAR_VALUE = {c: i for i, c in enumerate("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")}
NUMBER_RE = re.compile(r"([A-Z]{2,6})-(\d{8})-(\d{5})-([0-9A-Z]{3})")
_LOOSE_RE = re.compile(r"[A-Za-z]{2,6}\s*[-—_]\s*\d{8}\s*[-—_]\s*\d{5}\s*[-—_]\s*[0-9A-Za-z]{3}")


def check_code(domain: str, day: str, seq: int) -> str:
    body = f"{domain}{day}{seq:05d}"
    total = sum((i + 1) * _CHAR_VALUE[c] for i, c in enumerate(body)) % _MODULUS
    return "".join(_ALPHABET[(total >> shift) & 31] for shift in (10, 5, 0))


def format_number(domain: str, day: str, seq: int) -> str:
    if not 1 <= seq <= 99999:
        raise ValueError(f"daily sequence out of range: {seq}")
    return f"{domain}-{day}-{seq:05d}-{check_code(domain, day, seq)}"


@dataclass(frozen=True)
class ParsedNumber:
    domain: str
    day: str
    seq: int

    @property
    def number(self) -> str:
        return format_number(self.domain, self.day, self.seq)


def parse_number(text: str) -> ParsedNumber | None:
    """The ticket number in `text` if it is well formed and its check code fits."""
    s = text.strip().upper().replace("—", "-").replace("_", "-")
    m = NUMBER_RE.fullmatch(s)
    if not m:
        return None
    domain, day, seq, code = m.groups()
    if code.translate(_ALIASES) != check_code(domain, day, int(seq)) or int(seq) == 0:
        return None
    return ParsedNumber(domain, day, int(seq))


def find_number(text: str) -> str | None:
    """A ticket-number-looking token in free text (validated by parse_number later)."""
    m = _LOOSE_RE.search(text)
    return re.sub(r"\s+", "", m.group(0)) if m else None
