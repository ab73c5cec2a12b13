"""A variant module with a bug that raises at import time (not an ImportError)."""

from __future__ import annotations

raise RuntimeError("a bug at import time")
