"""The CJK font every drawn report uses: the managers' charts and the service report PDF.

Noto Sans CJK SC Regular (SIL Open Font License), shipped inside the `mplfonts`
package, so Chinese renders on a machine without fonts of its own. The file is
found without importing the package, which would import matplotlib: the PDF
needs only the path.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

PACKAGE = "mplfonts"
FONT_FILE = "NotoSansCJKsc-Regular.otf"


@lru_cache(maxsize=1)
def cjk_font_file() -> Path:
    """The bundled font's path; a clear error if the package is missing."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the {PACKAGE} package (the bundled CJK font) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "fonts" / FONT_FILE
