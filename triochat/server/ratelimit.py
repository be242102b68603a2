"""Flood control: a token bucket per client, fed by the caller's clock."""

from __future__ import annotations


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; ``rate`` 0 means unlimited."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(max(burst, 1))
        self._tokens = self._burst
        self._stamp = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        if self._rate <= 0:
            return True
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
