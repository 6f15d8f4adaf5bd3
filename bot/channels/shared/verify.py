"""What the adapters verify callbacks with, besides each platform's own signature scheme."""
from __future__ import annotations

import hmac


def same(a: str, b: str) -> bool:
    """Constant-time comparison of two strings (a signature or token against the expected one),
    so the time an answer takes does not tell a forger how many leading characters were right."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))
