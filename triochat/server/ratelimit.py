"""Flood control: a token bucket per client, fed by the caller's clock."""

from __future__ import annotations

import math


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

    def available(self, now: float) -> float:
        """The tokens there would be at ``now``; none is spent."""
        if self._rate <= 0:
            return math.inf
        return min(self._burst, self._tokens + (now - self._stamp) * self._rate)

    def full(self, now: float) -> bool:
        """Whether the bucket is back to its burst (forgetting it would change nothing)."""
        return self.available(now) >= self._burst

    def wait(self, now: float) -> float:
        """Seconds until a token is there (0 if one is)."""
        return max(0.0, (1 - self.available(now)) / self._rate) if self._rate > 0 else 0.0
