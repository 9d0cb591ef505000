"""TPM 2.0 backend: the storage root key, PCR-bound keys, signing, import.

Every ESAPI call runs on one worker thread, because ESAPI blocks and is not
thread-safe; the asyncio loop only awaits that thread. No transient object
stays loaded between requests: each operation loads the key, signs and
flushes it. At most one object is loaded at a time (a key, or the OEM
policy key while a signed policy is checked), far below the three
transient slots a TPM must have, and a TPM reset loses nothing but the
connection state.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

# By default ESYS prints every TPM error to stderr, but the service handles
# and logs those errors itself. Must be set before the TSS
# libraries are loaded.
os.environ.setdefault("TSS2_LOG", "all+NONE")

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: E402
from tpm2_pytss import ESAPI, TCTILdr, TSS2_Exception  # noqa: E402
from tpm2_pytss.constants import (  # noqa: E402
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_EO,
    TPM2_HC,
    TPM2_PT,
    TPM2_RC,
    TPM2_RH,
    TPM2_SE,
    TPM2_ST,
    TPM2_SU,
    TPMA_OBJECT,
)
from tpm2_pytss.types import (  # noqa: E402
    TPM2B_OPERAND,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE,
    TPM2B_SENSITIVE_CREATE,
    TPML_PCR_SELECTION,
    TPMS_SENSITIVE_CREATE,
    TPMT_SYM_DEF,
    TPMT_SYM_DEF_OBJECT,
    TPMT_TK_HASHCHECK,
    TPMT_TK_VERIFIED,
)
from tpm2_pytss.utils import wrap  # noqa: E402

from .algorithms import KEY_TYPES, KeyType, SignAlgorithm  # noqa: E402
from .errors import (  # noqa: E402
    InvalidArgument,
    PolicyMismatch,
    TpmError,
    TpmLockout,
    TpmUnavailable,
)
from .policy import SignedPolicy, policy_authorize_digest  # noqa: E402
from .tpm_encoding import (  # noqa: E402
    counter_public,
    ecdsa_signature,
    encode_signature,
    oem_public_area,
    pad_ecc_public,
    pad_ecc_sensitive,
    sig_scheme,
)

_LOGGER = logging.getLogger(__name__)

SRK_HANDLE = 0x81000001

_SRK_ATTRIBUTES = (
    TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.DECRYPT
    | TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.NODA
)

# No USERWITHAUTH: the key's auth value cannot be used, only its policy.
# NODA on every policy object: failed policy checks after repeated power
# loss must not count towards dictionary-attack lockout.
_SIGNING_KEY_ATTRIBUTES = (
    TPMA_OBJECT.SIGN_ENCRYPT
    | TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.NODA
)
# TPM2_Import rejects FIXEDTPM and FIXEDPARENT (the object came from
# outside) and SENSITIVEDATAORIGIN (the TPM did not make the key).
_IMPORTED_KEY_ATTRIBUTES = TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.NODA
# A sealed data object: neither SIGN_ENCRYPT nor DECRYPT, only TPM2_Unseal.
_SEALED_ATTRIBUTES = TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.NODA

# Response codes that mean the policy did not hold, with or without the
# session/parameter bits set (TPM 2.0 Part 2, table 16).
_POLICY_CODES = {int(TPM2_RC.POLICY_FAIL), int(TPM2_RC.PCR_CHANGED)}
_POLICY_NV_CODE = int(TPM2_RC.POLICY)  # PolicyNV's comparison failed
_SIGNATURE_CODE = int(TPM2_RC.SIGNATURE)
_HANDLE_CODE = int(TPM2_RC.HANDLE)
_LOCKOUT_CODE = int(TPM2_RC.LOCKOUT)
# TPM_PT_HR_TRANSIENT_MIN (Part 2, TPM_PT constants): the transient object
# slots the TPM guarantees. tpm2-pytss 3.0 has no name for it.
_PT_HR_TRANSIENT_MIN = 0x10E
_PERMANENT_IN_LOCKOUT = 0x200  # TPMA_PERMANENT.inLockout (bit 9)
_PT_PERMANENT = 0x200  # TPM_PT_PERMANENT
_MAX_LOADED_OBJECTS = 1
# TCTIs that talk to the TPM without a resource manager, so objects that a
# crashed process left loaded stay loaded until someone flushes them.
_RAW_TCTIS = ("swtpm", "mssim")
# The TPM was reset and needs TPM2_Startup before it accepts commands.
_INITIALIZE_CODE = int(TPM2_RC.INITIALIZE)
_TCTI_LAYER = 0xA0000  # TSS2_TCTI_RC_LAYER: the transport failed

T = TypeVar("T")


@dataclass(frozen=True)
class PcrSelection:
    """A PCR bank and indices, e.g. ``sha256:0,2,4,7``."""

    bank: str
    indices: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> PcrSelection:
        match = re.fullmatch(r"(sha1|sha256|sha384):(\d{1,2}(?:,\d{1,2})*)", text.strip())
        if not match:
            raise InvalidArgument(
                f"PCR selection {text!r} is invalid; write it as BANK:INDICES, "
                "for example sha256:0,2,4,7"
            )
        indices = tuple(sorted({int(i) for i in match.group(2).split(",")}))
        if any(i > 23 for i in indices):
            raise InvalidArgument(f"PCR selection {text!r}: indices must be 0..23")
        return cls(match.group(1), indices)

    def __str__(self) -> str:
        return f"{self.bank}:{','.join(str(i) for i in self.indices)}"

    def to_tpm(self) -> TPML_PCR_SELECTION:
        return TPML_PCR_SELECTION.parse(str(self))


@dataclass(frozen=True)
class Authorization:
    """The OEM policy key and policyRef that a key's PolicyAuthorize names."""

    oem_key_name: bytes  # TPM name of the OEM public key
    policy_ref: bytes

    def auth_policy(self) -> bytes:
        return policy_authorize_digest(self.oem_key_name, self.policy_ref)


@dataclass(frozen=True)
class KeyBlobs:
    """Stored form of a TPM key: its public area and SRK-wrapped private area.

    ``pcr_selection`` is the PolicyPCR selection for keys bound to fixed
    PCR values. A key with an ``authorization`` has a PolicyAuthorize
    authPolicy instead, and the signed policy supplies the PCRs.
    """

    public: bytes  # marshalled TPM2B_PUBLIC
    private: bytes  # marshalled TPM2B_PRIVATE, encrypted by the SRK
    pcr_selection: PcrSelection
    authorization: Authorization | None = None


def _base_code(err: TSS2_Exception) -> int:
    """Return the TPM response code without the handle, session or parameter number."""
    rc = int(err.rc)
    if rc & 0x80:  # format-one codes carry a number in bits 8..11
        return rc & 0xBF
    return rc & 0xFFFF


def _public_der(public: TPM2B_PUBLIC) -> bytes:
    pem = public.to_pem()
    key = serialization.load_pem_public_key(pem)
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class TpmBackend:
    """Keys inside a TPM 2.0, reached through ESAPI over a TCTI."""

    def __init__(self, tcti: str) -> None:
        self.tcti = tcti
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="tpm"
        )
        self._esapi: ESAPI | None = None
        self._tcti_context: TCTILdr | None = None
        self._srk: Any = None
        self._available = False
        self._recovery: asyncio.Task[None] | None = None
        self._closed = False
        self._policy: SignedPolicy | None = None
        self._ticket: TPMT_TK_VERIFIED | None = None
        self._oem_key_name: bytes | None = None

    @property
    def available(self) -> bool:
        return self._available

    async def start(self) -> None:
        """Connect to the TPM and make sure the SRK exists.

        Raises:
            TpmUnavailable: the TPM cannot be reached.
        """
        await self._run(self._connect)

    async def close(self) -> None:
        self._closed = True
        if self._recovery is not None:
            self._recovery.cancel()
        await asyncio.get_running_loop().run_in_executor(self._executor, self._disconnect)
        self._executor.shutdown(wait=True)

    async def create_key(
        self,
        selection: PcrSelection,
        key_type: KeyType = KEY_TYPES["ecc-p256"],
        authorization: Authorization | None = None,
    ) -> tuple[KeyBlobs, bytes]:
        """Create a key inside the TPM, bound to the current PCR values.

        With ``authorization`` the key's authPolicy is PolicyAuthorize by
        the OEM key instead. An ed25519 key is a seed from the TPM's random
        number generator in a sealed data object with the same policy.
        Returns the blobs to store and the DER SubjectPublicKeyInfo.
        """
        return await self._call(self._create_key, selection, key_type, authorization)

    async def import_key(
        self,
        key_type: KeyType,
        private_key: Any,
        selection: PcrSelection,
        authorization: Authorization | None = None,
    ) -> tuple[KeyBlobs, bytes]:
        """Bring an existing private key under the SRK with TPM2_Import.

        ``private_key`` is a cryptography private key object of the type
        ``key_type``. The key is wrapped for the SRK in this process and
        imported, so the result is an ordinary TPM key with the same
        policy as a created one. An ed25519 seed is sealed instead.
        """
        return await self._call(
            self._import_key, key_type, private_key, selection, authorization
        )

    async def public_key(self, blobs: KeyBlobs) -> bytes:
        """Return the DER SubjectPublicKeyInfo of stored blobs (no TPM call)."""
        public, _ = TPM2B_PUBLIC.unmarshal(blobs.public)
        return _public_der(public)

    async def sign(
        self,
        blobs: KeyBlobs,
        digest: bytes,
        algorithm: SignAlgorithm | None = None,
    ) -> bytes:
        """Sign a digest with a TPM-resident key.

        Returns a DER signature for ECDSA and the PKCS #1 signature octets
        for RSA. ``algorithm`` defaults to ECDSA with SHA-256.

        Raises:
            PolicyMismatch: the PCRs differ from the values the key is bound
                to, or from the values of the loaded signed policy.
            TpmUnavailable: the TPM is unreachable or recovering from a reset.
        """
        return await self._call(self._sign, blobs, digest, algorithm)

    async def unseal(self, blobs: KeyBlobs) -> bytearray:
        """Unseal a sealed data object under its policy.

        The caller owns the returned buffer and must overwrite it after use.

        Raises:
            PolicyMismatch: as for :meth:`sign`.
        """
        return await self._call(self._unseal, blobs)

    async def check_policy(self, blobs: KeyBlobs) -> None:
        """Check that the key's policy is satisfied now, in a session without the key.

        Used before signing with an unsealed seed, so that a PCR change
        at run time stops an Ed25519 key as it stops a TPM-resident one.

        Raises:
            PolicyMismatch: as for :meth:`sign`.
        """
        await self._call(self._check_policy, blobs)

    async def load_policy(self, policy: SignedPolicy, oem_public_pem: bytes) -> int:
        """Verify a signed policy with the TPM and use it for authorized keys.

        The OEM key is loaded with TPM2_LoadExternal in the owner hierarchy
        (a NULL-hierarchy key yields a NULL ticket, which PolicyAuthorize
        rejects) and TPM2_VerifySignature returns the ticket that each later
        PolicyAuthorize uses. The release counter is then raised to the
        policy's release. Returns the counter value.

        Raises:
            InvalidArgument: the OEM key did not sign the policy, or the
                release is older than the counter (a rollback).
        """
        return await self._call(self._load_policy, policy, oem_public_pem)

    async def release_counter(self, index: int) -> int | None:
        """Return the release counter's value, or None if it is not defined."""
        return await self._call(self._read_counter, index)

    @property
    def policy(self) -> SignedPolicy | None:
        """The signed policy in use for authorized keys."""
        return self._policy

    # -- worker-thread side ------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise TpmUnavailable("the TPM backend is shut down")
        if not self._available:
            self._start_recovery()
            raise TpmUnavailable(
                f"the TPM at {self.tcti} is not available; the service is "
                "reconnecting, retry shortly"
            )
        try:
            return await self._run(fn, *args)
        except TSS2_Exception as err:
            raise self._translate(err) from err

    def _translate(self, err: TSS2_Exception) -> Exception:
        code = _base_code(err)
        if code in _POLICY_CODES:
            return PolicyMismatch(
                "the TPM rejected the key's PCR policy: the platform state "
                "differs from the one the key was sealed to"
            )
        if code == _POLICY_NV_CODE:
            return PolicyMismatch(
                "the TPM rejected the signed policy: the release counter is "
                "above its release, so the policy was revoked; load the "
                "policy of the current release"
            )
        if code == _LOCKOUT_CODE:
            _LOGGER.error(
                "TPM is in dictionary-attack lockout (%s); keys of this service "
                "are NODA and keep working, other DA-protected objects fail "
                "until the lockout recovery time passes or the lockout is reset",
                err,
            )
            return TpmLockout(
                "the TPM is in dictionary-attack lockout and rejected the "
                "authorization; wait for the lockout recovery time or reset "
                "the lockout with the lockout hierarchy's auth value"
            )
        if code == _INITIALIZE_CODE or (int(err.rc) & 0xFF0000) == _TCTI_LAYER:
            what = "was reset" if code == _INITIALIZE_CODE else "connection failed"
            _LOGGER.warning("TPM %s (%s); recovering", what, err)
            self._available = False
            self._start_recovery()
            return TpmUnavailable(
                f"the TPM {what}; the service is recovering, retry shortly"
            )
        _LOGGER.error("TPM command failed: %s", err)
        return TpmError(f"the TPM command failed: {err}")

    def _start_recovery(self) -> None:
        if self._closed or (self._recovery is not None and not self._recovery.done()):
            return
        self._recovery = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        delay = 0.1
        while not self._closed:
            try:
                await self._run(self._reconnect)
                _LOGGER.info("TPM available again at %s", self.tcti)
                return
            except (TSS2_Exception, TpmUnavailable) as err:
                _LOGGER.warning("TPM recovery failed (%s); retrying in %.1f s", err, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _connect(self) -> None:
        try:
            name, _, conf = self.tcti.partition(":")
            self._tcti_context = TCTILdr(name, conf or None)
            self._esapi = ESAPI(self._tcti_context)
        except TSS2_Exception as err:
            self._disconnect()
            raise TpmUnavailable(f"cannot open TPM TCTI {self.tcti!r}: {err}") from err
        self._startup_if_needed()
        self._check_capacity()
        if name in _RAW_TCTIS:
            self._flush_stale_handles()
        self._srk = self._ensure_srk()
        self._available = True
        _LOGGER.info("connected to TPM at %s, SRK at 0x%08x", self.tcti, SRK_HANDLE)

    def _reconnect(self) -> None:
        if self._esapi is not None:
            try:
                self._startup_if_needed()
                self._srk = self._ensure_srk()
                self._available = True
                return
            except TSS2_Exception as err:
                # After a transport failure ESAPI may refuse every further
                # call ("called in the wrong order"), so start afresh.
                _LOGGER.info("TPM context unusable (%s); opening a new one", err)
        self._disconnect()
        self._connect()

    def _disconnect(self) -> None:
        for closable in (self._esapi, self._tcti_context):
            if closable is not None:
                try:
                    closable.close()
                except Exception as err:  # best effort while tearing down
                    _LOGGER.debug("closing TPM context failed: %s", err)
        self._esapi = None
        self._tcti_context = None
        self._srk = None
        self._available = False

    def _startup_if_needed(self) -> None:
        assert self._esapi is not None
        try:
            self._esapi.get_capability(TPM2_CAP.HANDLES, TPM2_HC.PERSISTENT_FIRST, 1)
        except TSS2_Exception as err:
            if _base_code(err) != _INITIALIZE_CODE:
                raise
            _LOGGER.info("TPM needs startup after a reset; sending TPM2_Startup(CLEAR)")
            self._esapi.startup(TPM2_SU.CLEAR)

    def _ensure_srk(self) -> Any:
        esapi = self._esapi
        assert esapi is not None
        _, data = esapi.get_capability(TPM2_CAP.HANDLES, SRK_HANDLE, 1)
        if SRK_HANDLE in list(data.data.handles):
            return esapi.tr_from_tpmpublic(SRK_HANDLE)
        _LOGGER.info("no SRK at 0x%08x; creating it", SRK_HANDLE)
        template = TPM2B_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=_SRK_ATTRIBUTES)
        primary, *_ = esapi.create_primary(None, template, ESYS_TR.OWNER)
        try:
            return esapi.evict_control(ESYS_TR.OWNER, primary, SRK_HANDLE)
        finally:
            esapi.flush_context(primary)

    def _check_capacity(self) -> None:
        """Log lockout and check that the TPM has enough transient slots."""
        esapi = self._esapi
        assert esapi is not None
        _, data = esapi.get_capability(TPM2_CAP.TPM_PROPERTIES, _PT_HR_TRANSIENT_MIN, 1)
        slots = int(data.data.tpmProperties[0].value)
        if slots < _MAX_LOADED_OBJECTS:
            raise TpmUnavailable(
                f"the TPM at {self.tcti} has {slots} transient object slots; the "
                f"service needs {_MAX_LOADED_OBJECTS}"
            )
        _, data = esapi.get_capability(TPM2_CAP.TPM_PROPERTIES, _PT_PERMANENT, 1)
        if int(data.data.tpmProperties[0].value) & _PERMANENT_IN_LOCKOUT:
            _LOGGER.error(
                "TPM is in dictionary-attack lockout; keys of this service are "
                "NODA and keep working, other DA-protected objects fail until "
                "the lockout recovery time passes or the lockout is reset"
            )

    def _flush_stale_handles(self) -> None:
        """Flush transient objects that an earlier process left loaded."""
        esapi = self._esapi
        assert esapi is not None
        _, data = esapi.get_capability(TPM2_CAP.HANDLES, TPM2_HC.TRANSIENT_FIRST, 32)
        handles = list(data.data.handles)
        for handle in handles:
            try:
                esapi.flush_context(esapi.tr_from_tpmpublic(handle))
            except TSS2_Exception as err:
                _LOGGER.warning("cannot flush stale TPM handle 0x%08x: %s", handle, err)
        if handles:
            _LOGGER.info("flushed %d stale transient TPM handles", len(handles))
        # NOTE: stale policy sessions are not flushed: ESAPI can flush only
        # sessions it started itself. They expire at the next TPM reset.

    def _pcr_policy_digest(self, selection: PcrSelection) -> bytes:
        esapi = self._esapi
        assert esapi is not None
        trial = _start_session(esapi, TPM2_SE.TRIAL)
        try:
            esapi.policy_pcr(trial, None, selection.to_tpm())
            return bytes(esapi.policy_get_digest(trial))
        finally:
            esapi.flush_context(trial)

    def _auth_policy(
        self, selection: PcrSelection, authorization: Authorization | None
    ) -> bytes:
        if authorization is not None:
            return authorization.auth_policy()
        return self._pcr_policy_digest(selection)

    def _create_key(
        self,
        selection: PcrSelection,
        key_type: KeyType,
        authorization: Authorization | None,
    ) -> tuple[KeyBlobs, bytes]:
        esapi = self._esapi
        assert esapi is not None
        auth_policy = self._auth_policy(selection, authorization)
        if key_type.sealed:
            seed = bytearray(bytes(esapi.get_random(32)))
            try:
                return self._seal_seed(seed, selection, authorization, auth_policy)
            finally:
                _wipe(seed)
        assert key_type.tpm_template is not None
        template = TPM2B_PUBLIC.parse(
            key_type.tpm_template, objectAttributes=_SIGNING_KEY_ATTRIBUTES
        )
        template.publicArea.authPolicy = auth_policy
        private, public, *_ = esapi.create(self._srk, None, template)
        blobs = KeyBlobs(public.marshal(), private.marshal(), selection, authorization)
        return blobs, _public_der(public)

    def _seal_seed(
        self,
        seed: bytearray,
        selection: PcrSelection,
        authorization: Authorization | None,
        auth_policy: bytes,
    ) -> tuple[KeyBlobs, bytes]:
        esapi = self._esapi
        assert esapi is not None
        template = TPM2B_PUBLIC.parse("keyedhash", objectAttributes=_SEALED_ATTRIBUTES)
        template.publicArea.authPolicy = auth_policy
        sensitive = TPM2B_SENSITIVE_CREATE(sensitive=TPMS_SENSITIVE_CREATE(data=bytes(seed)))
        private, public, *_ = esapi.create(self._srk, sensitive, template)
        public_der = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(seed)).public_key(
        ).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        blobs = KeyBlobs(public.marshal(), private.marshal(), selection, authorization)
        return blobs, public_der

    def _import_key(
        self,
        key_type: KeyType,
        private_key: Any,
        selection: PcrSelection,
        authorization: Authorization | None,
    ) -> tuple[KeyBlobs, bytes]:
        esapi = self._esapi
        assert esapi is not None
        auth_policy = self._auth_policy(selection, authorization)

        if key_type.sealed:
            seed = bytearray(
                private_key.private_bytes(
                    serialization.Encoding.Raw,
                    serialization.PrivateFormat.Raw,
                    serialization.NoEncryption(),
                )
            )
            try:
                return self._seal_seed(seed, selection, authorization, auth_policy)
            finally:
                _wipe(seed)
        # NOTE: the DER encoding below is a Python bytes object, which
        # cannot be overwritten. It is dropped at once, but its memory is
        # only freed, not cleared.
        sensitive = TPM2B_SENSITIVE.from_pem(
            private_key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        public_pem = private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        public = TPM2B_PUBLIC.from_pem(public_pem, objectAttributes=_IMPORTED_KEY_ATTRIBUTES)
        public.publicArea.authPolicy = auth_policy
        pad_ecc_public(public)
        pad_ecc_sensitive(public, sensitive)

        srk_public, *_ = esapi.read_public(self._srk)
        symmetric = TPMT_SYM_DEF_OBJECT.parse("aes128cfb")
        encryption_key, duplicate, seed = wrap(
            srk_public.publicArea, public, sensitive, symdef=symmetric
        )
        private = esapi.import_(
            self._srk, encryption_key, public, duplicate, seed, symmetric
        )
        blobs = KeyBlobs(public.marshal(), private.marshal(), selection, authorization)
        return blobs, _public_der(public)

    def _satisfy_policy(self, session: Any, blobs: KeyBlobs) -> None:
        """Run the key's policy commands in ``session``."""
        esapi = self._esapi
        assert esapi is not None
        if blobs.authorization is None:
            esapi.policy_pcr(session, None, blobs.pcr_selection.to_tpm())
            return
        policy, ticket = self._policy, self._ticket
        if policy is None or ticket is None:
            raise PolicyMismatch(
                "the key needs a signed policy and none is loaded; load the "
                "signed policy of the current software release"
            )
        if (
            blobs.authorization.oem_key_name != self._oem_key_name
            or blobs.authorization.policy_ref != policy.policy_ref
        ):
            raise PolicyMismatch(
                "the loaded signed policy is for another OEM key or policy "
                "reference than the key was created with"
            )

        selection = PcrSelection(policy.bank, policy.indices)
        esapi.policy_pcr(session, None, selection.to_tpm())
        counter = esapi.tr_from_tpmpublic(policy.counter_index)
        try:
            esapi.policy_nv(
                counter, counter, session,
                TPM2B_OPERAND(policy.release.to_bytes(8, "big")),
                TPM2_EO.UNSIGNED_LE,
                session1=ESYS_TR.PASSWORD,
            )
        finally:
            esapi.tr_close(counter)

        if bytes(esapi.policy_get_digest(session)) != policy.approved_policy:
            raise PolicyMismatch(
                f"the PCR values differ from those of the signed policy for "
                f"release {policy.release}; the platform state is not the "
                "approved one, load the signed policy of the running release"
            )
        esapi.policy_authorize(
            session, policy.approved_policy, self._oem_key_name, ticket,
            policy.policy_ref,
        )

    def _sign(
        self, blobs: KeyBlobs, digest: bytes, algorithm: SignAlgorithm | None
    ) -> bytes:
        esapi = self._esapi
        assert esapi is not None
        public, _ = TPM2B_PUBLIC.unmarshal(blobs.public)
        private, _ = TPM2B_PRIVATE.unmarshal(blobs.private)
        scheme = sig_scheme(algorithm)
        key = esapi.load(self._srk, private, public)
        try:
            session = _start_session(esapi, TPM2_SE.POLICY)
            try:
                self._satisfy_policy(session, blobs)
                ticket = TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.NULL)
                signature = esapi.sign(key, digest, scheme, ticket, session1=session)
            finally:
                _flush_quietly(esapi, session)
        finally:
            _flush_quietly(esapi, key)
        return encode_signature(signature)

    def _check_policy(self, blobs: KeyBlobs) -> None:
        esapi = self._esapi
        assert esapi is not None
        public, _ = TPM2B_PUBLIC.unmarshal(blobs.public)
        session = _start_session(esapi, TPM2_SE.POLICY)
        try:
            self._satisfy_policy(session, blobs)
            digest = bytes(esapi.policy_get_digest(session))
        finally:
            _flush_quietly(esapi, session)
        if digest != bytes(public.publicArea.authPolicy):
            raise PolicyMismatch(
                "the TPM rejected the key's PCR policy: the platform state "
                "differs from the one the key was sealed to"
            )

    def _unseal(self, blobs: KeyBlobs) -> bytearray:
        esapi = self._esapi
        assert esapi is not None
        public, _ = TPM2B_PUBLIC.unmarshal(blobs.public)
        private, _ = TPM2B_PRIVATE.unmarshal(blobs.private)
        sealed = esapi.load(self._srk, private, public)
        try:
            session = _start_session(esapi, TPM2_SE.POLICY)
            try:
                self._satisfy_policy(session, blobs)
                data = esapi.unseal(sealed, session1=session)
            finally:
                _flush_quietly(esapi, session)
        finally:
            _flush_quietly(esapi, sealed)
        # NOTE: the TPM2B_SENSITIVE_DATA returned by tpm2-pytss is freed
        # without being cleared; only the returned copy is under our control.
        return bytearray(bytes(data))

    def _load_policy(self, policy: SignedPolicy, oem_public_pem: bytes) -> int:
        esapi = self._esapi
        assert esapi is not None
        public = oem_public_area(oem_public_pem)
        signature = ecdsa_signature(policy.signature)
        a_hash = hashlib.sha256(policy.signed_data()).digest()
        external = esapi.load_external(public, None, ESYS_TR.OWNER)
        try:
            oem_key_name = bytes(esapi.tr_get_name(external))
            try:
                ticket = esapi.verify_signature(external, a_hash, signature)
            except TSS2_Exception as err:
                if _base_code(err) != _SIGNATURE_CODE:
                    raise
                raise InvalidArgument(
                    f"signed policy for release {policy.release} is not signed by "
                    "the configured OEM policy key; get a policy signed by that key"
                ) from err
        finally:
            _flush_quietly(esapi, external)

        value = self._ensure_counter(policy.counter_index)
        if policy.release < value:
            raise InvalidArgument(
                f"signed policy for release {policy.release} is older than the "
                f"release counter ({value}); rollback to an older release is "
                "rejected, load the policy of the current release"
            )
        while value < policy.release:
            counter = esapi.tr_from_tpmpublic(policy.counter_index)
            try:
                esapi.nv_increment(counter, ESYS_TR.OWNER)
            finally:
                esapi.tr_close(counter)
            value = self._read_counter(policy.counter_index) or 0
        self._policy, self._ticket, self._oem_key_name = policy, ticket, oem_key_name
        _LOGGER.info(
            "signed policy for release %d loaded (%s), release counter 0x%08x at %d",
            policy.release, policy.pcrs, policy.counter_index, value,
        )
        return value

    def _ensure_counter(self, index: int) -> int:
        value = self._read_counter(index)
        if value is not None:
            return value
        esapi = self._esapi
        assert esapi is not None
        _LOGGER.info("defining the release counter at NV index 0x%08x", index)
        counter = esapi.nv_define_space(None, counter_public(index, written=False))
        try:
            esapi.nv_increment(counter, ESYS_TR.OWNER)
        except TSS2_Exception:
            # An NV index that was never written cannot be read, so undo the
            # definition and let the next load start again.
            esapi.nv_undefine_space(counter, ESYS_TR.OWNER)
            raise
        esapi.tr_close(counter)
        value = self._read_counter(index)
        assert value is not None
        return value

    def _read_counter(self, index: int) -> int | None:
        esapi = self._esapi
        assert esapi is not None
        try:
            counter = esapi.tr_from_tpmpublic(index)
        except TSS2_Exception as err:
            if _base_code(err) != _HANDLE_CODE:
                raise
            return None
        try:
            data = esapi.nv_read(counter, 8, 0, auth_handle=counter)
        finally:
            esapi.tr_close(counter)
        return int.from_bytes(bytes(data), "big")

    # Test and operator helpers --------------------------------------------

    async def describe(self) -> dict[str, str]:
        """Read the TPM's manufacturer, vendor string, spec revision and firmware.

        Raises:
            TpmUnavailable: the TPM cannot be reached.
        """

        def query() -> dict[str, str]:
            assert self._esapi is not None
            _, data = self._esapi.get_capability(
                TPM2_CAP.TPM_PROPERTIES, TPM2_PT.FIXED, 16
            )
            fixed = int(TPM2_PT.FIXED)
            return describe_properties(
                {int(p.property) - fixed: int(p.value) for p in data.data.tpmProperties}
            )

        return await self._call(query)

    async def transient_handles(self) -> list[int]:
        """Return the transient handles loaded in the TPM (for leak checks)."""

        def query() -> list[int]:
            assert self._esapi is not None
            _, data = self._esapi.get_capability(
                TPM2_CAP.HANDLES, TPM2_HC.TRANSIENT_FIRST, 16
            )
            return list(data.data.handles)

        return await self._call(query)


# Offsets of fixed properties from TPM2_PT_FIXED (TPM 2.0 Part 2, table 23).
_PT_FAMILY, _PT_REVISION, _PT_MANUFACTURER = 0, 2, 5
_PT_VENDOR_STRINGS = range(6, 10)
_PT_FIRMWARE_1, _PT_FIRMWARE_2 = 11, 12


def _ascii_of(value: int) -> str:
    """Decode a property that packs up to four ASCII characters, high byte first."""
    return value.to_bytes(4, "big").rstrip(b"\0").decode("ascii", "replace").strip()


def describe_properties(values: dict[int, int]) -> dict[str, str]:
    """Turn fixed TPM properties (offset from TPM2_PT_FIXED -> value) into text."""
    info = {
        "manufacturer": _ascii_of(values.get(_PT_MANUFACTURER, 0)),
        "vendor": "".join(_ascii_of(values.get(i, 0)) for i in _PT_VENDOR_STRINGS),
        "spec": f"{_ascii_of(values.get(_PT_FAMILY, 0))} rev "
                f"{values.get(_PT_REVISION, 0) / 100:.2f}",
    }
    first, second = values.get(_PT_FIRMWARE_1, 0), values.get(_PT_FIRMWARE_2, 0)
    # The vendor defines the firmware version's format, so it is shown raw.
    info["firmware"] = f"{first:08x}.{second:08x}"
    return info


def _start_session(esapi: ESAPI, session_type: TPM2_SE) -> Any:
    """Start an unbound, unsalted SHA-256 session of the given type."""
    # NOTE: no salt and no parameter encryption, so a probe on the TPM's
    # SPI bus can read digests and signatures (neither is secret, but an
    # interposer could also alter them).
    return esapi.start_auth_session(
        ESYS_TR.NONE,
        ESYS_TR.NONE,
        session_type,
        TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
        TPM2_ALG.SHA256,
    )


def _wipe(buffer: bytearray) -> None:
    buffer[:] = bytes(len(buffer))


def _flush_quietly(esapi: ESAPI, handle: Any) -> None:
    try:
        esapi.flush_context(handle)
    except TSS2_Exception as err:
        # After a reset the handle is already gone; nothing is left loaded.
        _LOGGER.debug("flushing TPM handle failed: %s", err)
