"""sd_notify, journal protocol, audit log, rate limit and request guard, alone."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from pathlib import Path

import pytest

from vehicle_keysvc.audit import AuditLog
from vehicle_keysvc.callers import Caller
from vehicle_keysvc.config import load_config
from vehicle_keysvc.errors import (
    AccessDenied,
    ConfigError,
    Locked,
    NotFound,
    RateLimited,
    ServiceStopping,
)
from vehicle_keysvc.gate import Decision
from vehicle_keysvc.journal import JournalHandler, encode_fields, stderr_is_journal
from vehicle_keysvc.monitor import LockEvent
from vehicle_keysvc.ratelimit import MAX_TRACKED_UIDS, RateLimiter
from vehicle_keysvc.request_guard import RequestGuard
from vehicle_keysvc.sdnotify import SystemdNotifier

PZP = Caller(":1.7", 1000, 4242)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def receiver(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10.0)
    return sock


def test_notifier_sends_ready_and_status(tmp_path: Path) -> None:
    with receiver(tmp_path / "notify") as sock:
        notifier = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
        notifier.ready("serving 2 key(s)")
        notifier.stopping("draining requests")
        notifier.close()

        assert sock.recv(4096) == b"READY=1\nSTATUS=serving 2 key(s)"
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=draining requests"


def test_notifier_abstract_socket() -> None:
    name = f"keysvc-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10.0)
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.notify("READY=1")
        notifier.close()
        assert sock.recv(4096) == b"READY=1"


def test_notifier_without_socket_does_nothing() -> None:
    notifier = SystemdNotifier({})
    assert not notifier.enabled
    assert not notifier.notify("READY=1")
    assert not SystemdNotifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


def test_watchdog_interval_rules() -> None:
    assert SystemdNotifier({"WATCHDOG_USEC": "4000000"}).watchdog_interval == 4.0
    other_pid = {"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert SystemdNotifier(other_pid).watchdog_interval is None
    assert SystemdNotifier({"WATCHDOG_USEC": "abc"}).watchdog_interval is None
    assert SystemdNotifier({"WATCHDOG_USEC": "0"}).watchdog_interval is None


@pytest.mark.asyncio
async def test_watchdog_pings(tmp_path: Path) -> None:
    with receiver(tmp_path / "notify") as sock:
        sock.setblocking(False)
        notifier = SystemdNotifier({
            "NOTIFY_SOCKET": str(tmp_path / "notify"),
            "WATCHDOG_USEC": "20000",
            "WATCHDOG_PID": str(os.getpid()),
        })
        notifier.start_watchdog()
        loop = asyncio.get_running_loop()
        pings = [await asyncio.wait_for(loop.sock_recv(sock, 64), 10.0) for _ in range(3)]
        await notifier.stop_watchdog()
        notifier.close()
    assert pings == [b"WATCHDOG=1"] * 3


def test_encode_fields_binary_form() -> None:
    data = encode_fields({"MESSAGE": "two\nlines", "PRIORITY": "6"})
    assert data == b"MESSAGE\n" + struct.pack("<Q", 9) + b"two\nlines\nPRIORITY=6\n"


def test_stderr_is_journal_matches_inode() -> None:
    stat = os.fstat(2)
    assert stderr_is_journal({"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"})
    assert not stderr_is_journal({"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino + 1}"})
    assert not stderr_is_journal({})


def test_journal_handler_sends_audit_fields(tmp_path: Path) -> None:
    logger = logging.getLogger("test.journal")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    with receiver(tmp_path / "journal") as sock:
        handler = JournalHandler(str(tmp_path / "journal"))
        logger.addHandler(handler)
        try:
            AuditLog(logger=logger).allowed("Sign", PZP, "pzp")
        finally:
            logger.removeHandler(handler)
            handler.close()
        lines = sock.recv(65536).decode().splitlines()
    fields = dict(line.split("=", 1) for line in lines)
    assert fields["PRIORITY"] == "6"
    assert fields["SYSLOG_IDENTIFIER"] == "vehicle-keysvc"
    assert fields["KEYSVC_METHOD"] == "Sign"
    assert fields["KEYSVC_UID"] == "1000"
    assert fields["KEYSVC_PID"] == "4242"
    assert fields["KEYSVC_KEY"] == "pzp"
    assert fields["KEYSVC_DECISION"] == "allow"
    assert fields["MESSAGE"] == (
        "audit event=request method=Sign uid=1000 pid=4242 key=pzp decision=allow"
    )


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "vehicle_keysvc.audit"]


def test_audit_counts_repeated_denials(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="vehicle_keysvc.audit")
    clock = FakeClock()
    audit = AuditLog(repeat_window=60.0, clock=clock)
    for _ in range(50):
        audit.rejected("Sign", PZP, "pzp", Locked("keys are locked: power is OFF"))
    audit.rejected("Sign", PZP, "other", Locked("keys are locked: power is OFF"))

    assert len(audit_lines(caplog)) == 2
    clock.now += 61.0
    audit.flush()
    lines = audit_lines(caplog)
    assert len(lines) == 3
    assert lines[0] == (
        'audit event=request method=Sign uid=1000 pid=4242 key=pzp decision=deny '
        'reason="keys are locked: power is OFF"'
    )
    assert lines[2].endswith("repeated=49 window_s=61")
    assert "key=other" in lines[1]


def test_audit_error_and_unknown_caller(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="vehicle_keysvc.audit")
    audit = AuditLog()
    audit.rejected("Sign", PZP, "gone", NotFound("key 'gone' not found"))
    audit.rejected("ListKeys", None, None, AccessDenied("the caller could not be identified"))
    lines = audit_lines(caplog)
    assert "decision=error" in lines[0]
    assert "uid=unknown pid=unknown key=- decision=deny" in lines[1]


def test_audit_escapes_control_characters(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="vehicle_keysvc.audit")
    AuditLog().rejected("Sign", PZP, "a\nuid=0 decision=allow", NotFound("x"))
    (line,) = audit_lines(caplog)
    assert "\n" not in line
    # The control character becomes \x0a, and the quoting doubles its backslash.
    assert 'key="a\\\\x0auid=0 decision=allow"' in line


def test_audit_lock_events(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="vehicle_keysvc.audit")
    audit = AuditLog()
    audit.on_vehicle_event(LockEvent(Decision(True, "power is OFF"), 1.0, True))
    audit.on_vehicle_event(LockEvent(Decision(True, "power is stale"), 2.0, False))
    audit.on_vehicle_event(LockEvent(Decision(False, "power is ON"), 3.0, True))
    assert audit_lines(caplog) == [
        'audit event=lock reason="power is OFF"',
        'audit event=unlock reason="power is ON"',
    ]


def test_rate_limiter_burst_then_refill() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    for _ in range(3):
        limiter.check(1000, "Sign")
    with pytest.raises(RateLimited, match=r"uid 1000 exceeded the rate limit of 2 requests/s"):
        limiter.check(1000, "Sign")
    limiter.check(0, "Sign")
    clock.now += 0.5
    limiter.check(1000, "Sign")
    with pytest.raises(RateLimited, match=r"retry in 0\.50 s"):
        limiter.check(1000, "Sign")


def test_rate_limiter_off_and_reconfigured() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=0.0, burst=1, clock=clock)
    for _ in range(100):
        limiter.check(1000, "Sign")
    assert len(limiter) == 0
    limiter.configure(1.0, 1)
    limiter.check(1000, "Sign")
    with pytest.raises(RateLimited):
        limiter.check(1000, "Sign")


def test_rate_limiter_table_is_bounded() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=1, clock=clock)
    for uid in range(MAX_TRACKED_UIDS + 10):
        limiter.check(uid, "ListKeys")
    assert len(limiter) == MAX_TRACKED_UIDS


@pytest.mark.asyncio
async def test_guard_drains_then_rejects() -> None:
    guard = RequestGuard()
    release = asyncio.Event()

    async def identify() -> Caller:
        return PZP

    async def slow_sign() -> bytes:
        await release.wait()
        return b"signature"

    task = asyncio.create_task(guard.run("Sign", ("pzp",), identify, slow_sign))
    while guard.in_flight == 0:
        await asyncio.sleep(0)
    guard.stop_accepting()
    with pytest.raises(ServiceStopping, match="the service is stopping"):
        await guard.run("Sign", ("pzp",), identify, slow_sign)
    drained = asyncio.create_task(guard.drain(30.0))
    await asyncio.sleep(0)
    assert not drained.done()
    release.set()
    assert await task == b"signature"
    assert await drained == 0


@pytest.mark.asyncio
async def test_guard_applies_rate_limit(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="vehicle_keysvc.audit")
    guard = RequestGuard(limiter=RateLimiter(rate=0.001, burst=1))
    calls = []

    async def identify() -> Caller:
        return PZP

    async def list_keys() -> list[str]:
        calls.append(1)
        return []

    assert await guard.run("ListKeys", (), identify, list_keys) == []
    with pytest.raises(RateLimited):
        await guard.run("ListKeys", (), identify, list_keys)
    assert len(calls) == 1
    assert guard.in_flight == 0
    assert "decision=deny" in audit_lines(caplog)[-1]


@pytest.mark.parametrize("text,message", [
    ("[limits]\nrate_per_second = -1\n", "[limits] rate_per_second = -1 is invalid"),
    ("[limits]\nburst = 0\n", "[limits] burst = 0 is invalid"),
    ("[limits]\nburst = 2.5\n", "[limits] burst = 2.5 is invalid: give an integer"),
    ("[limits]\nper_minute = 5\n", "[limits] has unknown option(s) per_minute"),
    ("[logging]\naudit_repeat_window_s = 0\n",
     "[logging] audit_repeat_window_s = 0 is invalid: use 1..86400 seconds"),
])
def test_limits_config_rejected(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "keysvc.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert message in str(caught.value)


def test_limits_config_parsed(tmp_path: Path) -> None:
    config = tmp_path / "keysvc.toml"
    config.write_text("[limits]\nrate_per_second = 0.5\nburst = 3\n"
                      "[logging]\naudit_repeat_window_s = 120\n")
    loaded = load_config(config)
    assert loaded.rate_limit == 0.5
    assert loaded.rate_burst == 3
    assert loaded.audit_repeat_window == 120.0
