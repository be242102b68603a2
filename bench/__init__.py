"""The fan-out benchmark: ``python -m bench`` (``make bench``); see docs/performance.md."""
