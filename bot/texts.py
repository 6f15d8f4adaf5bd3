"""Everything a chat user reads, looked up by key from one file per language."""
from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path

LOCALE_DIR = Path(__file__).with_name("locale")
DEFAULT_LANG = "zh_CN"


@lru_cache(maxsize=None)
def _table(lang: str) -> dict[str, str]:
    data = tomllib.loads((LOCALE_DIR / f"{lang}.toml").read_text(encoding="utf-8"))
    flat: dict[str, str] = {}

    def walk(prefix: str, node: dict) -> None:
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                walk(key, v)
            else:
                flat[key] = v

    walk("", data)
    return flat


def t(key: str, lang: str = DEFAULT_LANG, **values) -> str:
    """The text for `key`, formatted with `values`. A missing key is a bug: raise."""
    return _table(lang)[key].format(**values)
