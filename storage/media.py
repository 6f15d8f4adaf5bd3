"""Pictures kept on disk under their content hash (playground, API and WeCom photos)."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def store_content(folder: Path, data: bytes, suffix: str) -> Path:
    """Write `data` into `folder` as `<sha256 prefix><suffix>` and return its path (blocking).

    The same picture may be stored twice at the same moment (one card sent to a
    group and to a customer in one delivery pass): each writer uses its own
    temporary file and renames it into place, so no one reads a half-written
    file or loses the other's temporary file.
    """
    target = folder / (hashlib.sha256(data).hexdigest()[:32] + suffix)
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return target
