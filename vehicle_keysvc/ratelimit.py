"""Per-caller rate limit: a token bucket for each uid.

Each uid may send ``burst`` requests at once and ``rate`` requests per
second on average after that. The limit is per uid, not per connection, so
a caller cannot get more by opening more connections.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import RateLimited

# Buckets of uids idle long enough to be full again are dropped once the
# table contains this many, so that many uids cannot grow it without bound.
MAX_TRACKED_UIDS = 1024


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets keyed by uid.

    ``rate`` is in requests per second, ``burst`` in requests. A rate of 0
    turns the limit off.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[int, _Bucket] = {}

    def configure(self, rate: float, burst: int) -> None:
        """Apply new limits; each uid keeps its spent tokens, capped at ``burst``."""
        self.rate = rate
        self.burst = burst
        for bucket in self._buckets.values():
            bucket.tokens = min(bucket.tokens, float(burst))

    def check(self, uid: int, method: str) -> None:
        """Take one token from ``uid``'s bucket.

        Raises:
            RateLimited: the bucket is empty.
        """
        if self.rate <= 0:
            return
        now = self._clock()
        bucket = self._buckets.get(uid)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED_UIDS:
                self._drop_full_buckets(now)
            bucket = self._buckets[uid] = _Bucket(float(self.burst), now)
        else:
            bucket.tokens = min(
                float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate
            )
            bucket.updated = now
        if bucket.tokens < 1.0:
            wait = (1.0 - bucket.tokens) / self.rate
            raise RateLimited(
                f"uid {uid} exceeded the rate limit of {self.rate:g} requests/s "
                f"(burst {self.burst}) on {method}; retry in {wait:.2f} s"
            )
        bucket.tokens -= 1.0

    def _drop_full_buckets(self, now: float) -> None:
        refill_time = self.burst / self.rate
        for uid in [u for u, b in self._buckets.items() if now - b.updated >= refill_time]:
            del self._buckets[uid]
        if len(self._buckets) >= MAX_TRACKED_UIDS:
            # Every tracked uid was active recently. Dropping the oldest
            # one gives it a full bucket again, which is the lesser harm than
            # unbounded memory.
            oldest = min(self._buckets, key=lambda u: self._buckets[u].updated)
            del self._buckets[oldest]

    def __len__(self) -> int:
        return len(self._buckets)
