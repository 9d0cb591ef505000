"""Audit log: one record per request outcome and per lock or unlock.

Records go to the ``vehicle_keysvc.audit`` logger as single lines of
``name=value`` pairs, so journalctl and grep read them alike. Each record
also carries its values as journal fields (``extra["journal_fields"]``),
which :class:`vehicle_keysvc.journal.JournalHandler` sends as structured
fields when journald is the log target.

Repeated rejections are counted instead of logged one by one. The first
rejection of a kind (same uid, method, key id and error) is logged, and
the repeats within ``repeat_window`` seconds are only counted. One summary
line reports the count when the window ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .callers import Caller
from .errors import AccessDenied, KeyServiceError, Locked, PolicyMismatch, RateLimited
from .monitor import Event, LockEvent

AUDIT_LOGGER = logging.getLogger("vehicle_keysvc.audit")

# Errors that mean the service rejected the request, as opposed to a request
# it could not carry out (bad argument, missing key, TPM unreachable).
DENIALS: tuple[type[KeyServiceError], ...] = (AccessDenied, Locked, PolicyMismatch, RateLimited)

# Methods that change nothing; their successes are logged at DEBUG only.
READ_ONLY_METHODS = frozenset({"ListKeys", "GetPublicKey", "GetCertificate"})

# Rejection kinds tracked at once; beyond this the pending counts are
# reported early, so many distinct callers cannot grow the table unbounded.
MAX_TRACKED_KINDS = 1024
MAX_KEY_ID_CHARS = 64


@dataclass
class _Repeats:
    first_seen: float
    count: int
    fields: dict[str, str]
    level: int


class AuditLog:
    """Writes audit records and folds repeated rejections into counts."""

    def __init__(
        self,
        repeat_window: float = 60.0,
        logger: logging.Logger = AUDIT_LOGGER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.repeat_window = repeat_window
        self._logger = logger
        self._clock = clock
        self._repeats: dict[tuple[Any, ...], _Repeats] = {}

    def allowed(self, method: str, caller: Caller, key_id: str | None) -> None:
        level = logging.DEBUG if method in READ_ONLY_METHODS else logging.INFO
        if not self._logger.isEnabledFor(level):
            return  # skips formatting the line, the cost of most requests
        fields = _request_fields(method, caller, key_id, "allow", "")
        self._write(level, fields)

    def rejected(
        self, method: str, caller: Caller | None, key_id: str | None, error: BaseException
    ) -> None:
        """Record a request that failed, or count it if it repeats a recent one."""
        decision = "deny" if isinstance(error, DENIALS) else "error"
        level = logging.WARNING if decision == "deny" else logging.INFO
        fields = _request_fields(method, caller, key_id, decision, _reason(error))
        kind = (
            caller.uid if caller is not None else None,
            method,
            fields["key"],
            type(error).__name__,
        )
        now = self._clock()
        repeats = self._repeats.get(kind)
        if repeats is not None and now - repeats.first_seen < self.repeat_window:
            repeats.count += 1
            return
        if repeats is not None:
            self._report(kind, repeats)
        if len(self._repeats) >= MAX_TRACKED_KINDS:
            self.flush(force=True)
        self._repeats[kind] = _Repeats(now, 0, fields, level)
        self._write(level, fields)

    def lock_changed(self, locked: bool, reason: str) -> None:
        fields = {"event": "lock" if locked else "unlock", "reason": reason}
        self._write(logging.INFO, fields)

    def on_vehicle_event(self, event: Event) -> None:
        """Monitor listener: record each change of the locked state."""
        if isinstance(event, LockEvent) and event.lock_changed:
            self.lock_changed(event.decision.locked, event.decision.reason)

    def flush(self, force: bool = False) -> None:
        """Report the counts of windows that ended (all of them if ``force``)."""
        now = self._clock()
        for kind, repeats in list(self._repeats.items()):
            if force or now - repeats.first_seen >= self.repeat_window:
                del self._repeats[kind]
                self._report(kind, repeats)

    def _report(self, kind: tuple[Any, ...], repeats: _Repeats) -> None:
        if repeats.count == 0:
            return
        fields = dict(repeats.fields)
        fields["repeated"] = str(repeats.count)
        fields["window_s"] = f"{self._clock() - repeats.first_seen:.0f}"
        self._write(repeats.level, fields)

    def _write(self, level: int, fields: dict[str, str]) -> None:
        line = " ".join(f"{name}={_quote(value)}" for name, value in fields.items())
        journal = {f"KEYSVC_{name.upper()}": value for name, value in fields.items()}
        self._logger.log(level, "audit %s", line, extra={"journal_fields": journal})


def _request_fields(
    method: str, caller: Caller | None, key_id: str | None, decision: str, reason: str
) -> dict[str, str]:
    fields = {
        "event": "request",
        "method": method,
        "uid": str(caller.uid) if caller is not None else "unknown",
        "pid": str(caller.pid) if caller is not None and caller.pid is not None else "unknown",
        "key": _printable(key_id, MAX_KEY_ID_CHARS) if key_id is not None else "-",
        "decision": decision,
    }
    if reason:
        fields["reason"] = reason
    return fields


def _reason(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return _printable(text.splitlines()[0] if text.strip() else type(error).__name__)


def _printable(text: str, limit: int = 200) -> str:
    """Escape control characters so a caller's string cannot forge a log line."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _quote(value: str) -> str:
    if value and not any(c in value for c in ' "\\='):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
