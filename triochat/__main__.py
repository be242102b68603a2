from __future__ import annotations

from triochat.cli import main

raise SystemExit(main())
