"""Caller check: who is calling, and may they use this key or method.

The D-Bus daemon vouches for each connection's uid and pid
(``GetConnectionCredentials``); the service trusts nothing the caller sends
about itself. Deny by default: a caller is an admin only if its uid is listed,
and may use a key only if it owns it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .errors import AccessDenied
from .keystore import KeyRecord

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caller:
    """A peer as the bus daemon identifies it."""

    unique_name: str
    uid: int
    pid: int | None

    def __str__(self) -> str:
        return f"{self.unique_name} (uid {self.uid}, pid {self.pid})"


CredentialsLookup = Callable[[str], Awaitable[Caller]]


class CallerCache:
    """Caches credentials per unique name; a unique name is never reused."""

    def __init__(self, lookup: CredentialsLookup) -> None:
        self._lookup = lookup
        self._cache: dict[str, Caller] = {}

    async def identify(self, unique_name: str) -> Caller:
        caller = self._cache.get(unique_name)
        if caller is None:
            caller = await self._lookup(unique_name)
            self._cache[unique_name] = caller
        return caller

    def forget(self, unique_name: str) -> None:
        """Drop a name whose connection closed."""
        self._cache.pop(unique_name, None)

    def __len__(self) -> int:
        return len(self._cache)


class AccessPolicy:
    """Access rules: which uids manage keys, and which uid uses each key."""

    def __init__(self, admin_uids: frozenset[int]) -> None:
        self.admin_uids = admin_uids

    def is_admin(self, caller: Caller) -> bool:
        return caller.uid in self.admin_uids

    def require_admin(self, caller: Caller, method: str) -> None:
        if not self.is_admin(caller):
            _LOGGER.debug("denied %s to %s: not an admin", method, caller)
            raise AccessDenied(f"{method} is for administrators; uid {caller.uid} is not one")

    def may_see(self, caller: Caller, record: KeyRecord) -> bool:
        return self.is_admin(caller) or caller.uid == record.owner_uid

    def require_owner(self, caller: Caller, record: KeyRecord, method: str) -> None:
        """Only the owner signs; an admin manages keys but cannot use them."""
        if caller.uid != record.owner_uid:
            _LOGGER.debug(
                "denied %s on key %r to %s: owner is uid %d",
                method,
                record.key_id,
                caller,
                record.owner_uid,
            )
            raise AccessDenied(
                f"uid {caller.uid} may not use key {record.key_id!r}"
            )

    def require_visible(self, caller: Caller, record: KeyRecord, method: str) -> None:
        if not self.may_see(caller, record):
            self.require_owner(caller, record, method)
