"""The load and fault harness: simulated clients that test a server (docs/harness.md)."""
