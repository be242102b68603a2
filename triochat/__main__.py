from __future__ import annotations

from triochat.entry import triochat

raise SystemExit(triochat())
