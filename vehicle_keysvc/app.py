"""The service process: wires config, TPM, key store, CAN and D-Bus together."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from dbus_fast import DBusError, Message
from dbus_fast.aio import MessageBus

from .audit import AuditLog
from .callers import AccessPolicy
from .can_source import CanStateSource
from .config import Config
from .dbus_service import BUS_NAME, connect_bus, serve
from .errors import KeyServiceError
from .keyservice import KeyService
from .keystore import KeyStore
from .profile import load_profile
from .ratelimit import RateLimiter
from .reload import RunningService, build_monitor, log_keys_without_gate_policy, reload_config
from .request_guard import RequestGuard
from .sdnotify import SystemdNotifier
from .tpm import TpmBackend

_LOGGER = logging.getLogger(__name__)


# How long SIGTERM waits for requests in flight before closing the bus
# connection. The unit's TimeoutStopSec must be longer.
DRAIN_TIMEOUT = 10.0


async def run_service(
    config: Config,
    stop: asyncio.Event | None = None,
    config_path: Path | None = None,
) -> None:
    """Run until SIGTERM or SIGINT (or until ``stop`` is set).

    SIGHUP loads ``config_path`` again (see :mod:`vehicle_keysvc.reload`).
    Under systemd the service sends READY=1 once it owns its bus name,
    WATCHDOG=1 if WatchdogSec= is set, and STOPPING=1 when it stops.

    Raises:
        ConfigError: the profile or the OEM policy key is invalid.
        TpmUnavailable: the TPM cannot be reached at start.
        NameTaken: another process owns the bus name.
        KeyServiceError: the key folder or the D-Bus bus cannot be used.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    notifier = SystemdNotifier()

    profile = load_profile(config.profile)
    _LOGGER.info(
        "vehicle profile %r from %s: facts %s, E2E %s",
        profile.name, profile.path, ", ".join(sorted(profile.facts)),
        "on" if profile.e2e_protected else "off (freshness only)",
    )
    monitor = build_monitor(config, profile)
    store = KeyStore(config.key_dir)
    store.load()
    log_keys_without_gate_policy(store, config)
    tpm = TpmBackend(config.tcti)
    await tpm.start()
    core = KeyService(store, tpm, monitor, AccessPolicy(config.admin_uids), config.pcr_selection,
                      config.signed_policy)
    source = CanStateSource(
        monitor, config.can_interface, config.can_channel, config.can_options,
        config.tick_interval,
    )
    guard = RequestGuard(
        AuditLog(config.audit_repeat_window),
        RateLimiter(config.rate_limit, config.rate_burst),
    )
    monitor.add_listener(guard.audit.on_vehicle_event)
    running = RunningService(config, config_path or Path(), core, source, guard)
    bus = None
    background: list[asyncio.Task[None]] = []
    try:
        core.finish_rotations()
        await core.start_signed_policy()
        try:
            bus = await asyncio.wait_for(connect_bus(config.bus), timeout=30.0)
        except (OSError, ValueError, TimeoutError, EOFError) as err:
            raise KeyServiceError(
                f"cannot connect to D-Bus bus {config.bus!r}: {err or type(err).__name__}; "
                "check [dbus] bus and that the bus daemon runs"
            ) from err
        interface = await serve(bus, core, guard)
        try:
            interface.tpm_info = await tpm.describe()
            _LOGGER.info("TPM: %s", ", ".join(f"{k} {v}" for k, v in interface.tpm_info.items()))
        except KeyServiceError as err:
            # Only the status output needs these; signing works without them.
            _LOGGER.warning("cannot read the TPM's properties: %s", err)
        await source.start()
        background.append(loop.create_task(_flush_audit(guard), name="audit-flush"))
        if config_path is not None:
            background.append(loop.create_task(
                _reload_on_sighup(running, notifier), name="sighup-reload"))
        _LOGGER.info(
            "vehicle-keysvc ready: %d key(s), %s", len(store.records()), monitor.decision.reason
        )
        notifier.ready(f"serving {len(store.records())} key(s)")
        notifier.start_watchdog()
        await stop.wait()
        _LOGGER.info("stopping")
        notifier.stopping("draining requests")
        await _drain(bus, guard)
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await notifier.stop_watchdog()
        await source.stop()
        core.seeds.wipe_all("service stopping")
        if bus is not None:
            bus.disconnect()
        await tpm.close()
        guard.audit.flush(force=True)
        notifier.close()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    _LOGGER.info("stopped")


async def _drain(bus: MessageBus, guard: RequestGuard) -> None:
    """Release the bus name, then let the requests in flight finish."""
    try:
        await bus.release_name(BUS_NAME)
    except (DBusError, OSError, EOFError) as err:
        _LOGGER.warning("releasing %s failed: %s", BUS_NAME, err)
    guard.stop_accepting()
    if guard.in_flight:
        _LOGGER.info("waiting for %d request(s) in flight", guard.in_flight)
    remaining = await guard.drain(DRAIN_TIMEOUT)
    if remaining:
        _LOGGER.warning(
            "%d request(s) still running after %.0f s; stopping without them",
            remaining, DRAIN_TIMEOUT,
        )
    # A round trip to the bus daemon returns only after every reply queued
    # before it was written, so no reply is lost when the connection closes.
    try:
        await asyncio.wait_for(bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus", member="GetId")), timeout=2.0)
    except (TimeoutError, OSError, EOFError) as err:
        _LOGGER.warning("bus did not answer before closing: %s", err or type(err).__name__)


async def _flush_audit(guard: RequestGuard) -> None:
    while True:
        await asyncio.sleep(max(1.0, guard.audit.repeat_window / 4))
        guard.audit.flush()


async def _reload_on_sighup(running: RunningService, notifier: SystemdNotifier) -> None:
    """Reload on each SIGHUP, one reload at a time."""
    requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, requested.set)
    try:
        while True:
            await requested.wait()
            requested.clear()
            _LOGGER.info("SIGHUP: reloading %s", running.config_path)
            notifier.reloading()
            await reload_config(running)
            notifier.ready(f"serving {len(running.core.store.records())} key(s)")
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
