"""The service process: wires config, TPM, key store, CAN and D-Bus together."""

from __future__ import annotations

import asyncio
import logging
import signal

from .callers import AccessPolicy
from .can_source import CanStateSource
from .config import Config
from .dbus_service import connect_bus, serve
from .errors import KeyServiceError
from .keyservice import KeyService
from .keystore import KeyStore
from .monitor import VehicleMonitor
from .profile import load_profile
from .tpm import TpmBackend

_LOGGER = logging.getLogger(__name__)


async def run_service(config: Config, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM or SIGINT (or until ``stop`` is set).

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

    profile = load_profile(config.profile)
    _LOGGER.info(
        "vehicle profile %r from %s: facts %s, E2E %s",
        profile.name, profile.path, ", ".join(sorted(profile.facts)),
        "on" if profile.e2e_protected else "off (freshness only)",
    )
    monitor = VehicleMonitor(
        profile, debounce_frames=config.debounce_frames, policies=config.gate_policies
    )
    store = KeyStore(config.key_dir)
    store.load()
    for record in store.records():
        if (record.gate_policy is not None
                and record.gate_policy not in config.gate_policies):
            _LOGGER.error(
                "key %r needs gate policy %r, which the config does not define; "
                "the key stays locked", record.key_id, record.gate_policy,
            )
    tpm = TpmBackend(config.tcti)
    await tpm.start()
    core = KeyService(store, tpm, monitor, AccessPolicy(config.admin_uids), config.pcr_selection,
                      config.signed_policy)
    source = CanStateSource(
        monitor, config.can_interface, config.can_channel, config.can_options,
        config.tick_interval,
    )
    bus = None
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
        await serve(bus, core)
        await source.start()
        _LOGGER.info("vehicle-keysvc ready")
        await stop.wait()
        _LOGGER.info("stopping")
    finally:
        await source.stop()
        core.seeds.wipe_all("service stopping")
        if bus is not None:
            bus.disconnect()
        await tpm.close()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    _LOGGER.info("stopped")
