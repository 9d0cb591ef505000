"""The key service core: every D-Bus method, without D-Bus.

The D-Bus front end identifies the caller and calls these methods; tests and
other front ends can call them directly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Any

from . import csr
from .algorithms import (
    KEY_TYPES,
    SIGN_ALGORITHMS,
    KeyType,
    SignAlgorithm,
    algorithm_for,
    check_data,
    key_type as lookup_key_type,
)
from .callers import AccessPolicy, Caller
from .errors import (
    ConfigError,
    InvalidArgument,
    KeyServiceError,
    Locked,
    NotFound,
    PolicyMismatch,
)
from .gate import Decision
from .key_import import key_type_of, parse_private_key
from .keystore import KeyRecord, KeyStore, check_key_id, write_file_atomically
from .monitor import VehicleMonitor
from .policy import PolicySettings, SignedPolicy, oem_key_name
from .sealed import SeedCache, sign_with_seed, wipe
from .tpm import Authorization, PcrSelection, TpmBackend

_LOGGER = logging.getLogger(__name__)

GENERATE_OPTIONS = ("owner_uid", "pcrs", "policy", "gate_policy")
IMPORT_OPTIONS = ("owner_uid", "pcrs", "policy", "gate_policy")
ROTATE_OPTIONS = ("key_type", "pcrs", "policy", "gate_policy")
CSR_OPTIONS = ("algorithm",)
POLICY_KINDS = ("pcr", "authorized")


class KeyService:
    """Key management and signing, gated by the vehicle monitor."""

    def __init__(
        self,
        store: KeyStore,
        tpm: TpmBackend,
        monitor: VehicleMonitor,
        policy: AccessPolicy,
        pcr_selection: PcrSelection,
        signed_policy: PolicySettings | None = None,
    ) -> None:
        self.store = store
        self.tpm = tpm
        self.monitor = monitor
        self.policy = policy
        self.pcr_selection = pcr_selection
        self.signed_policy = signed_policy
        self.seeds = SeedCache(monitor)
        self._oem_public_pem: bytes | None = None
        self._authorization: Authorization | None = None

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

        For ``ed25519`` the argument is the message itself.

        Raises:
            InvalidArgument: unknown algorithm, an algorithm that does not
                fit the key, or a wrong digest length.
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
        record = self.store.get(key_id)
        self.policy.require_owner(caller, record, "Sign")
        spec = algorithm_for(self._key_type(record), algorithm)
        check_data(spec, digest)
        signature = await self._gated_signature(caller, record, spec, bytes(digest), "Sign")
        _LOGGER.debug("signed with key %r (%s) for %s", key_id, algorithm, caller)
        return signature

    def _key_type(self, record: KeyRecord) -> KeyType:
        try:
            return KEY_TYPES[record.key_type]
        except KeyError:
            raise InvalidArgument(
                f"key {record.key_id!r} has type {record.key_type!r}, which this "
                "service version does not support"
            ) from None

    def _require_unlocked(
        self, caller: Caller, record: KeyRecord, method: str
    ) -> tuple[int, int]:
        decision = self._gate_decision(record)
        if decision.locked:
            # The seed cache is wiped on every lock of the default gate; a
            # key whose own gate policy locks loses its seed here.
            self.seeds.discard(record.key_id)
            _LOGGER.debug("refused %s with key %r for %s: locked (%s)",
                          method, record.key_id, caller, decision.reason)
            raise Locked(f"keys are locked: {decision.reason}")
        return self._lock_epochs(record)

    def _locked_since(self, record: KeyRecord, epochs: tuple[int, int]) -> bool:
        return self._lock_epochs(record) != epochs or self._gate_decision(record).locked

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

    async def _gated_signature(
        self, caller: Caller, record: KeyRecord, spec: SignAlgorithm, data: bytes,
        method: str,
    ) -> bytes:
        """Sign while the gate is unlocked; discard the result if it locked meanwhile."""
        epochs = self._require_unlocked(caller, record, method)
        if spec.takes_message:
            seed = self.seeds.get(record.key_id)
            if seed is None:
                seed = await self.tpm.unseal(record.blobs)
                if self._locked_since(record, epochs):
                    wipe(seed)
                else:
                    self.seeds.put(record.key_id, seed)
            else:
                # The TPM checked the policy when it unsealed; check it again
                # so that a PCR change since then stops the key.
                try:
                    await self.tpm.check_policy(record.blobs)
                except PolicyMismatch:
                    self.seeds.discard(record.key_id)
                    raise
                seed = self.seeds.get(record.key_id)
            if seed is not None and not self._locked_since(record, epochs):
                return sign_with_seed(seed, data)
        else:
            signature = await self.tpm.sign(record.blobs, data, spec)
            if not self._locked_since(record, epochs):
                return signature
        reason = self._gate_decision(record).reason
        _LOGGER.info("discarded signature with key %r for %s: locked while "
                     "signing (%s)", record.key_id, caller, reason)
        raise Locked(f"keys were locked while signing: {reason}")

    async def generate_key(
        self, caller: Caller, key_id: str, key_type: str, options: dict[str, Any]
    ) -> bytes:
        """Create a key in the TPM for ``options['owner_uid']``; return its public DER."""
        self.policy.require_admin(caller, "GenerateKey")
        check_key_id(key_id)
        chosen_type = lookup_key_type(key_type)
        _check_options(options, GENERATE_OPTIONS)
        owner_uid = _owner_uid(options)
        selection, authorization = self._key_policy(options)
        gate_policy = self._check_gate_policy(options.get("gate_policy"))
        if key_id in self.store:
            raise InvalidArgument(f"key {key_id!r} already exists; delete it first")

        blobs, public_der = await self.tpm.create_key(selection, chosen_type, authorization)
        record = KeyRecord(
            key_id, key_type, owner_uid, blobs, public_der, gate_policy=gate_policy
        )
        self.store.add(record)
        _LOGGER.info(
            "created key %r (%s) for uid %d, %s, gate policy %s, by %s",
            key_id, key_type, owner_uid, _describe_policy(blobs),
            gate_policy or "default", caller,
        )
        return public_der

    def _check_gate_policy(self, name: Any) -> str | None:
        if name is None:
            return None
        if not isinstance(name, str) or not name:
            raise InvalidArgument(
                f"option gate_policy = {name!r} is invalid: give the name of a "
                "[gate_policies.NAME] table in the service config"
            )
        if name not in self.monitor.policies:
            defined = ", ".join(sorted(self.monitor.policies)) or "none"
            raise InvalidArgument(
                f"gate policy {name!r} is not defined (defined: {defined}); add "
                f"[gate_policies.{name}] to the config or choose a defined policy"
            )
        return name

    def _key_policy(
        self, options: dict[str, Any], default_authorized: bool = False,
        default_selection: PcrSelection | None = None,
    ) -> tuple[PcrSelection, Authorization | None]:
        """Return the PCR selection and, for authorized keys, the OEM authorization."""
        selection = default_selection or self.pcr_selection
        if "pcrs" in options:
            if not isinstance(options["pcrs"], str):
                raise InvalidArgument("option pcrs must be a string such as sha256:0,7")
            selection = PcrSelection.parse(options["pcrs"])
        kind = options.get("policy", "authorized" if default_authorized else "pcr")
        if kind not in POLICY_KINDS:
            raise InvalidArgument(
                f"option policy = {kind!r} is invalid: use 'pcr' (fixed PCR values) "
                "or 'authorized' (PCR values in a policy signed by the OEM key)"
            )
        if kind == "pcr":
            return selection, None
        if self._authorization is None:
            raise InvalidArgument(
                "option policy = 'authorized' needs an OEM policy key; set [policy] "
                "oem_public_key and policy_ref in the service configuration"
            )
        return selection, self._authorization

    async def start_signed_policy(self) -> None:
        """Read the OEM policy key and load the stored signed policy, if configured.

        A stored policy that the TPM rejects is logged, not raised: keys
        with a fixed PCR policy keep working, and an admin can load a valid
        signed policy with LoadPolicy.
        """
        settings = self.signed_policy
        if settings is None:
            return
        try:
            self._oem_public_pem = settings.oem_public_key.read_bytes()
            name = oem_key_name(self._oem_public_pem)
        except (OSError, InvalidArgument) as err:
            raise ConfigError(
                f"[policy] oem_public_key {settings.oem_public_key}: {err}; give the "
                "OEM policy key's public key as PEM (ECC P-256)"
            ) from err
        self._authorization = Authorization(name, settings.policy_ref)
        if not settings.signed_policy.exists():
            _LOGGER.warning(
                "no signed policy at %s yet; keys with policy 'authorized' cannot "
                "sign until one is loaded", settings.signed_policy,
            )
            return
        try:
            data = settings.signed_policy.read_bytes()
            await self._load_policy(SignedPolicy.from_bytes(data))
        except (OSError, InvalidArgument) as err:
            _LOGGER.error("cannot use the signed policy %s: %s", settings.signed_policy, err)

    async def _load_policy(self, signed: SignedPolicy) -> int:
        settings = self.signed_policy
        assert settings is not None and self._oem_public_pem is not None
        if signed.policy_ref != settings.policy_ref:
            raise InvalidArgument(
                f"signed policy names policy reference {signed.policy_ref.decode()!r}, "
                f"but this device is {settings.policy_ref.decode()!r}; load the "
                "policy signed for this product"
            )
        if signed.counter_index != settings.counter_index:
            raise InvalidArgument(
                f"signed policy uses release counter 0x{signed.counter_index:08x}, "
                f"but this device uses 0x{settings.counter_index:08x}; sign it "
                "with the device's counter index"
            )
        return await self.tpm.load_policy(signed, self._oem_public_pem)

    async def load_policy(self, caller: Caller, data: bytes) -> int:
        """Verify a signed policy with the TPM, use it and store it; return the counter.

        Raises:
            AccessDenied: the caller is not an admin.
            InvalidArgument: the policy is malformed, for another product,
                not signed by the OEM key, or older than the release counter.
        """
        self.policy.require_admin(caller, "LoadPolicy")
        if self.signed_policy is None or self._oem_public_pem is None:
            raise InvalidArgument(
                "no OEM policy key is configured; set [policy] oem_public_key and "
                "policy_ref in the service configuration"
            )
        if len(data) > 64 * 1024:
            raise InvalidArgument(f"signed policy is {len(data)} bytes; at most 65536")
        signed = SignedPolicy.from_bytes(bytes(data))
        counter = await self._load_policy(signed)
        path = self.signed_policy.signed_policy
        try:
            write_file_atomically(path, bytes(data))
        except OSError as err:
            _LOGGER.error("cannot store the signed policy at %s: %s", path, err)
            raise KeyServiceError(
                f"the signed policy is in use but cannot be stored at {path} ({err}); "
                "fix [policy] signed_policy or its folder, then load it again"
            ) from err
        _LOGGER.info("loaded signed policy for release %d by %s", signed.release, caller)
        return counter

    async def import_key(
        self, caller: Caller, key_id: str, key_data: bytes, options: dict[str, Any]
    ) -> bytes:
        """Import an existing private key into the TPM; return its public DER.

        The key type follows from the key. ``key_data`` is overwritten
        with zeros when it is a ``bytearray``.

        Raises:
            AccessDenied: the caller is not an admin.
            InvalidArgument: the key is malformed, encrypted or of an
                unsupported type, or an option is invalid.
        """
        buffer = key_data if isinstance(key_data, bytearray) else bytearray(key_data)
        try:
            self.policy.require_admin(caller, "ImportKey")
            check_key_id(key_id)
            _check_options(options, IMPORT_OPTIONS)
            owner_uid = _owner_uid(options)
            selection, authorization = self._key_policy(options)
            gate_policy = self._check_gate_policy(options.get("gate_policy"))
            if key_id in self.store:
                raise InvalidArgument(f"key {key_id!r} already exists; delete it first")
            private_key = parse_private_key(buffer)
            chosen_type = key_type_of(private_key)
            blobs, public_der = await self.tpm.import_key(
                chosen_type, private_key, selection, authorization
            )
            del private_key
        finally:
            wipe(buffer)
        record = KeyRecord(
            key_id, chosen_type.name, owner_uid, blobs, public_der, gate_policy=gate_policy
        )
        self.store.add(record)
        _LOGGER.info(
            "imported key %r (%s) for uid %d, %s, by %s",
            key_id, chosen_type.name, owner_uid, _describe_policy(blobs), caller,
        )
        return public_der

    async def create_csr(
        self, caller: Caller, key_id: str, subject: str, options: dict[str, Any]
    ) -> bytes:
        """Return a DER PKCS #10 request for ``subject``, signed by the key.

        Signing needs the gate unlocked, as for Sign.

        Raises:
            InvalidArgument: bad subject or algorithm option.
            AccessDenied: the caller does not own the key.
            Locked: the gate is locked.
        """
        check_key_id(key_id)
        record = self.store.get(key_id)
        self.policy.require_owner(caller, record, "CreateCSR")
        _check_options(options, CSR_OPTIONS)
        name = csr.parse_subject(subject)
        chosen = self._key_type(record)
        algorithm = options.get("algorithm", chosen.csr_algorithm)
        if not isinstance(algorithm, str) or algorithm not in csr.CSR_ALGORITHMS:
            raise InvalidArgument(
                f"option algorithm = {algorithm!r} is invalid for a certificate "
                f"request; use one of {', '.join(csr.CSR_ALGORITHMS)}"
            )
        spec = algorithm_for(chosen, algorithm)
        info = csr.request_info(name, record.public_key_der)
        data = info if spec.takes_message else hashlib.new(spec.hash_name or "", info).digest()
        signature = await self._gated_signature(caller, record, spec, data, "CreateCSR")
        request = csr.assemble(info, spec, signature)
        csr.check_request(request)
        _LOGGER.info("created certificate request for key %r (%s) for %s",
                     key_id, subject, caller)
        return request

    async def set_certificate(self, caller: Caller, key_id: str, chain_data: bytes) -> None:
        """Store the certificate chain of a key; finish its rotation if it has one.

        Raises:
            InvalidArgument: the chain is malformed, or its leaf certificate
                is for another public key.
            AccessDenied: the caller neither owns the key nor is an admin.
        """
        check_key_id(key_id)
        record = self.store.get(key_id)
        self.policy.require_visible(caller, record, "SetCertificate")
        chain = csr.parse_chain(bytes(chain_data))
        if csr.leaf_public_key_der(chain) != record.public_key_der:
            raise InvalidArgument(
                f"the certificate's public key is not the public key of key {key_id!r}; "
                "give the certificate issued for this key's request"
            )
        record = dataclasses.replace(record, certificate_chain=csr.chain_pem(chain))
        self.store.replace(record)
        _LOGGER.info("stored a certificate chain of %d for key %r by %s",
                     len(chain), key_id, caller)
        self._finish_rotation(record)

    def _finish_rotation(self, record: KeyRecord) -> None:
        """Delete the key that a certified key replaces, then clear the link.

        Each step is one atomic file operation, so after a power loss the
        next start finishes the rotation (see :meth:`finish_rotations`).
        """
        if record.replaces is None or not record.certificate_chain:
            return
        old = record.replaces
        if old in self.store:
            self.seeds.discard(old)
            self.store.remove(old)
            _LOGGER.info("deleted key %r: replaced by certified key %r", old, record.key_id)
        self.store.replace(dataclasses.replace(record, replaces=None))

    def finish_rotations(self) -> None:
        """Complete rotations that a power loss interrupted after the certificate."""
        for record in self.store.records():
            self._finish_rotation(record)

    async def get_certificate(self, caller: Caller, key_id: str) -> bytes:
        """Return the stored PEM certificate chain, leaf first.

        Raises:
            NotFound: the key has no certificate yet.
        """
        check_key_id(key_id)
        record = self.store.get(key_id)
        self.policy.require_visible(caller, record, "GetCertificate")
        if not record.certificate_chain:
            raise NotFound(f"key {key_id!r} has no certificate yet; call SetCertificate")
        return record.certificate_chain

    async def rotate_key(
        self, caller: Caller, key_id: str, new_key_id: str, options: dict[str, Any]
    ) -> bytes:
        """Create ``new_key_id`` beside ``key_id``; return its public DER.

        The new key has the old key's owner and, unless the options set
        them, its type, PCR selection, policy kind and gate policy. The old key
        stays usable until SetCertificate stores a certificate for the new
        key; then the old key is deleted.
        """
        self.policy.require_admin(caller, "RotateKey")
        check_key_id(key_id)
        check_key_id(new_key_id)
        old = self.store.get(key_id)
        _check_options(options, ROTATE_OPTIONS)
        type_name = options.get("key_type", old.key_type)
        if not isinstance(type_name, str):
            raise InvalidArgument("option key_type must be a string such as ecc-p256")
        chosen_type = lookup_key_type(type_name)
        pending = [r.key_id for r in self.store.records() if r.replaces == key_id]
        if pending:
            raise InvalidArgument(
                f"key {key_id!r} is already being replaced by {pending[0]!r}; "
                f"set its certificate or delete it first"
            )
        if new_key_id in self.store:
            raise InvalidArgument(f"key {new_key_id!r} already exists; choose another id")
        selection, authorization = self._key_policy(
            options, default_authorized=old.blobs.authorization is not None,
            default_selection=old.blobs.pcr_selection,
        )
        gate_policy = old.gate_policy
        if "gate_policy" in options:
            gate_policy = self._check_gate_policy(options["gate_policy"])
        blobs, public_der = await self.tpm.create_key(selection, chosen_type, authorization)
        record = KeyRecord(new_key_id, type_name, old.owner_uid, blobs, public_der,
                           replaces=key_id, gate_policy=gate_policy)
        self.store.add(record)
        _LOGGER.info("created key %r (%s) to replace %r, %s, by %s",
                     new_key_id, type_name, key_id, _describe_policy(blobs), caller)
        return public_der

    async def delete_key(self, caller: Caller, key_id: str) -> None:
        self.policy.require_admin(caller, "DeleteKey")
        self.store.remove(check_key_id(key_id))
        self.seeds.discard(key_id)
        _LOGGER.info("deleted key %r by %s", key_id, caller)


def _check_options(options: dict[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        # A caller may send any number of options; name only the first few.
        listed = ", ".join(repr(name[:64]) for name in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise InvalidArgument(
            f"unknown option(s) {listed}{more}; known options are {', '.join(known)}"
        )


def _owner_uid(options: dict[str, Any]) -> int:
    if "owner_uid" not in options:
        raise InvalidArgument(
            "option owner_uid is missing: give the uid of the process that will use "
            "the key, e.g. owner_uid u 1000"
        )
    owner_uid = options["owner_uid"]
    if not isinstance(owner_uid, int) or isinstance(owner_uid, bool) or not (
        0 <= owner_uid < 2**32
    ):
        raise InvalidArgument(
            f"option owner_uid = {owner_uid!r} is invalid: give the uid of the "
            "process that will use the key (an integer 0..4294967295)"
        )
    return owner_uid


def _describe_policy(blobs: Any) -> str:
    if blobs.authorization is not None:
        policy_ref = blobs.authorization.policy_ref.decode(errors="replace")
        return f"policy signed by the OEM key ({policy_ref!r})"
    return f"PCR policy {blobs.pcr_selection}"
