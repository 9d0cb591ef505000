"""The key service core: every D-Bus method, without D-Bus.

The D-Bus front end identifies the caller and calls these methods; tests and
other front ends can call them directly.
"""

from __future__ import annotations

import logging
from typing import Any

from .callers import AccessPolicy, Caller
from .errors import InvalidArgument, Locked
from .gate import Decision
from .keystore import KeyRecord, KeyStore, check_key_id
from .monitor import VehicleMonitor
from .tpm import PcrSelection, TpmBackend

_LOGGER = logging.getLogger(__name__)

KEY_TYPES = ("ecc-p256",)
SIGN_ALGORITHMS = {"ecdsa-sha256": 32}  # algorithm -> digest length in bytes
GENERATE_OPTIONS = ("owner_uid", "pcrs", "gate_policy")


class KeyService:
    """Key management and signing, gated by the vehicle monitor."""

    def __init__(
        self,
        store: KeyStore,
        tpm: TpmBackend,
        monitor: VehicleMonitor,
        policy: AccessPolicy,
        pcr_selection: PcrSelection,
    ) -> None:
        self.store = store
        self.tpm = tpm
        self.monitor = monitor
        self.policy = policy
        self.pcr_selection = pcr_selection

    def list_keys(self, caller: Caller) -> list[str]:
        return [r.key_id for r in self.store.records() if self.policy.may_see(caller, r)]

    async def get_public_key(self, caller: Caller, key_id: str) -> bytes:
        record = self.store.get(check_key_id(key_id))
        self.policy.require_visible(caller, record, "GetPublicKey")
        return record.public_key_der

    async def sign(
        self, caller: Caller, key_id: str, digest: bytes, algorithm: str
    ) -> bytes:
        """Sign ``digest`` with the caller's key while the gate is unlocked.

        Raises:
            InvalidArgument: unknown algorithm or wrong digest length.
            NotFound: no such key.
            AccessDenied: the caller does not own the key.
            Locked: the gate is locked, or locked while the TPM signed.
            PolicyMismatch: the PCRs differ from the key's policy.
            TpmUnavailable: the TPM is unreachable or recovering.
        """
        check_key_id(key_id)
        if algorithm not in SIGN_ALGORITHMS:
            raise InvalidArgument(
                f"algorithm {algorithm!r} is not supported; use one of "
                f"{', '.join(SIGN_ALGORITHMS)}"
            )
        expected = SIGN_ALGORITHMS[algorithm]
        if len(digest) != expected:
            raise InvalidArgument(
                f"digest is {len(digest)} bytes; {algorithm} needs a {expected}-byte "
                "digest"
            )
        record = self.store.get(key_id)
        self.policy.require_owner(caller, record, "Sign")

        decision = self._gate_decision(record)
        if decision.locked:
            _LOGGER.info("refused Sign with key %r for %s: locked (%s)",
                         key_id, caller, decision.reason)
            raise Locked(f"keys are locked: {decision.reason}")
        epochs = self._lock_epochs(record)
        signature = await self.tpm.sign(record.blobs, bytes(digest))
        after = self._gate_decision(record)
        if self._lock_epochs(record) != epochs or after.locked:
            reason = after.reason
            _LOGGER.info("discarded signature with key %r for %s: locked while "
                         "signing (%s)", key_id, caller, reason)
            raise Locked(f"keys were locked while signing: {reason}")
        _LOGGER.info("signed with key %r for %s", key_id, caller)
        return signature

    def _gate_decision(self, record: KeyRecord) -> Decision:
        """Return the default gate's decision, or the key's policy's if that locks."""
        decision = self.monitor.decision
        if decision.locked or record.gate_policy is None:
            return decision
        return self.monitor.policy_decision(record.gate_policy)

    def _lock_epochs(self, record: KeyRecord) -> tuple[int, int]:
        policy_epoch = -1
        if record.gate_policy is not None:
            policy_epoch = self.monitor.policy_epoch(record.gate_policy)
        return self.monitor.lock_epoch, policy_epoch

    async def generate_key(
        self, caller: Caller, key_id: str, key_type: str, options: dict[str, Any]
    ) -> bytes:
        """Create a key in the TPM for ``options['owner_uid']``; return its public DER."""
        self.policy.require_admin(caller, "GenerateKey")
        check_key_id(key_id)
        if key_type not in KEY_TYPES:
            raise InvalidArgument(
                f"key type {key_type!r} is not supported; use one of {', '.join(KEY_TYPES)}"
            )
        unknown = set(options) - set(GENERATE_OPTIONS)
        if unknown:
            raise InvalidArgument(
                f"unknown option(s) {', '.join(sorted(unknown))}; known options are "
                f"{', '.join(GENERATE_OPTIONS)}"
            )
        owner_uid = options.get("owner_uid")
        if not isinstance(owner_uid, int) or isinstance(owner_uid, bool) or not (
            0 <= owner_uid < 2**32
        ):
            raise InvalidArgument(
                f"option owner_uid = {owner_uid!r} is invalid: give the uid of the "
                "process that will use the key (an integer 0..4294967295)"
            )
        selection = self.pcr_selection
        if "pcrs" in options:
            if not isinstance(options["pcrs"], str):
                raise InvalidArgument("option pcrs must be a string such as sha256:0,7")
            selection = PcrSelection.parse(options["pcrs"])
        gate_policy = self._check_gate_policy(options.get("gate_policy"))
        if key_id in self.store:
            raise InvalidArgument(f"key {key_id!r} already exists; delete it first")

        blobs, public_der = await self.tpm.create_key(selection)
        record = KeyRecord(
            key_id, key_type, owner_uid, blobs, public_der, gate_policy=gate_policy
        )
        self.store.add(record)
        _LOGGER.info(
            "created key %r (%s) for uid %d, PCR policy %s, gate policy %s, by %s",
            key_id, key_type, owner_uid, selection, gate_policy or "default", caller,
        )
        return public_der

    def _check_gate_policy(self, name: Any) -> str | None:
        if name is None:
            return None
        if not isinstance(name, str):
            raise InvalidArgument(
                f"option gate_policy = {name!r} is invalid: give a policy name "
                "as a string"
            )
        if name not in self.monitor.policies:
            defined = ", ".join(sorted(self.monitor.policies)) or "none"
            raise InvalidArgument(
                f"gate policy {name!r} is not defined (defined: {defined}); add "
                f"[gate_policies.{name}] to the config or choose a defined policy"
            )
        return name

    async def delete_key(self, caller: Caller, key_id: str) -> None:
        self.policy.require_admin(caller, "DeleteKey")
        self.store.remove(check_key_id(key_id))
        _LOGGER.info("deleted key %r by %s", key_id, caller)
