"""Unsealed Ed25519 seeds, kept in memory only while the gate is unlocked.

The service requests an unseal from the TPM only while the gate is
unlocked, and the TPM unseals only under the key's policy. The cache keeps
each seed in a ``bytearray`` and overwrites it with zeros on every lock of
the default gate, on key deletion and at shutdown. A key with its own gate
policy loses its seed at its next refused request after that policy locks.
"""

from __future__ import annotations

import logging

from cryptography.hazmat.primitives.asymmetric import ed25519

from .monitor import Event, LockEvent, VehicleMonitor

_LOGGER = logging.getLogger(__name__)


def wipe(buffer: bytearray) -> None:
    """Overwrite a secret buffer with zeros."""
    buffer[:] = bytes(len(buffer))


class SeedCache:
    """Ed25519 seeds unsealed while the gate is unlocked, wiped on lock."""

    def __init__(self, monitor: VehicleMonitor) -> None:
        self._seeds: dict[str, bytearray] = {}
        monitor.add_listener(self._on_event)

    def get(self, key_id: str) -> bytearray | None:
        return self._seeds.get(key_id)

    def put(self, key_id: str, seed: bytearray) -> None:
        previous = self._seeds.pop(key_id, None)
        if previous is not None:
            wipe(previous)
        self._seeds[key_id] = seed

    def discard(self, key_id: str) -> None:
        seed = self._seeds.pop(key_id, None)
        if seed is not None:
            wipe(seed)

    def wipe_all(self, reason: str) -> None:
        if self._seeds:
            _LOGGER.info("wiped %d unsealed Ed25519 seeds: %s", len(self._seeds), reason)
        for seed in self._seeds.values():
            wipe(seed)
        self._seeds.clear()

    def __len__(self) -> int:
        return len(self._seeds)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, LockEvent) and event.decision.locked:
            self.wipe_all(f"keys locked ({event.decision.reason})")


def sign_with_seed(seed: bytearray, message: bytes) -> bytes:
    """Sign ``message`` with an Ed25519 seed.

    NOTE: cryptography takes the seed as immutable bytes, so one copy per
    call lives in Python memory until it is freed, and OpenSSL keeps the
    expanded key until the key object is freed. Neither is overwritten.
    """
    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(seed))
    return key.sign(message)
