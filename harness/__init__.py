"""The load and fault harness (see issue 3)."""
