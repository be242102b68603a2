from __future__ import annotations

from triochat.entry import harness

raise SystemExit(harness())
