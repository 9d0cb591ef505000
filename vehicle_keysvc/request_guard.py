"""Checks around every D-Bus request: drain, rate limit and audit.

The D-Bus front end runs each method inside :meth:`RequestGuard.run`. The
guard rejects new requests once the service is stopping, takes a token from
the caller's rate limit, records the outcome in the audit log, and counts
the requests in flight so that shutdown can wait for them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .audit import AuditLog
from .callers import Caller
from .errors import ServiceStopping
from .ratelimit import RateLimiter

_LOGGER = logging.getLogger(__name__)

T = TypeVar("T")


class RequestGuard:
    """Admission, rate limit, audit and in-flight count of D-Bus requests."""

    def __init__(self, audit: AuditLog | None = None, limiter: RateLimiter | None = None) -> None:
        self.audit = AuditLog() if audit is None else audit
        self.limiter = RateLimiter(rate=0.0, burst=1) if limiter is None else limiter
        self.in_flight = 0
        self.accepting = True
        self._idle = asyncio.Event()
        self._idle.set()

    async def run(
        self,
        method: str,
        args: tuple[Any, ...],
        identify: Callable[[], Awaitable[Caller]],
        call: Callable[[], Awaitable[T]],
    ) -> T:
        """Run ``call`` for the caller that ``identify`` returns.

        Raises:
            ServiceStopping: the service is draining before it stops.
            RateLimited: the caller's uid is over its rate limit.
            Exception: whatever ``identify`` or ``call`` raises, after it is
                recorded in the audit log.
        """
        key_id = args[0] if args and isinstance(args[0], str) else None
        caller: Caller | None = None
        self.in_flight += 1
        self._idle.clear()
        try:
            if not self.accepting:
                raise ServiceStopping(
                    f"{method} rejected: the service is stopping; retry once it is back"
                )
            caller = await identify()
            _LOGGER.debug("%s from %s started", method, caller)
            self.limiter.check(caller.uid, method)
            result = await call()
        except Exception as err:
            self.audit.rejected(method, caller, key_id, err)
            raise
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()
        self.audit.allowed(method, caller, key_id)
        return result

    def stop_accepting(self) -> None:
        self.accepting = False

    async def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for requests in flight; return how many remain."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            pass
        return self.in_flight
