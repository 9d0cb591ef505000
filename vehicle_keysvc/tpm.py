"""TPM 2.0 backend: the storage root key, PCR-bound signing keys, signing.

Every ESAPI call runs on one worker thread, because ESAPI blocks and is not
thread-safe; the asyncio loop only awaits that thread. No transient object
stays loaded between requests: each operation loads the key, signs and
flushes it, so the service never needs more than two transient slots and
a TPM reset loses nothing but the connection state.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
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

from cryptography.hazmat.primitives.asymmetric import utils as asym_utils  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from tpm2_pytss import ESAPI, TCTILdr, TSS2_Exception  # noqa: E402
from tpm2_pytss.constants import (  # noqa: E402
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
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
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPML_PCR_SELECTION,
    TPMT_SIG_SCHEME,
    TPMT_SYM_DEF,
    TPMT_TK_HASHCHECK,
)

from .errors import InvalidArgument, PolicyMismatch, TpmError, TpmUnavailable  # noqa: E402

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
_SIGNING_KEY_ATTRIBUTES = (
    TPMA_OBJECT.SIGN_ENCRYPT
    | TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.NODA
)

# Response codes that mean the policy did not hold, with or without the
# session/parameter bits set (TPM 2.0 Part 2, table 16).
_POLICY_CODES = {int(TPM2_RC.POLICY_FAIL), int(TPM2_RC.PCR_CHANGED)}
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
class KeyBlobs:
    """Stored form of a TPM key: its public area and SRK-wrapped private area."""

    public: bytes  # marshalled TPM2B_PUBLIC
    private: bytes  # marshalled TPM2B_PRIVATE, encrypted by the SRK
    pcr_selection: PcrSelection


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

    async def create_key(self, selection: PcrSelection) -> tuple[KeyBlobs, bytes]:
        """Create an ECC P-256 signing key bound to the current PCR values.

        Returns the blobs to store and the DER SubjectPublicKeyInfo.
        """
        return await self._call(self._create_key, selection)

    async def public_key(self, blobs: KeyBlobs) -> bytes:
        """Return the DER SubjectPublicKeyInfo of stored blobs (no TPM call)."""
        public, _ = TPM2B_PUBLIC.unmarshal(blobs.public)
        return _public_der(public)

    async def sign(self, blobs: KeyBlobs, digest: bytes) -> bytes:
        """Sign a SHA-256 digest with ECDSA; return a DER signature.

        Raises:
            PolicyMismatch: the PCRs differ from the values the key is bound to.
            TpmUnavailable: the TPM is unreachable or recovering from a reset.
        """
        return await self._call(self._sign, blobs, digest)

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

    def _policy_digest(self, selection: PcrSelection) -> bytes:
        esapi = self._esapi
        assert esapi is not None
        trial = _start_session(esapi, TPM2_SE.TRIAL)
        try:
            esapi.policy_pcr(trial, None, selection.to_tpm())
            return bytes(esapi.policy_get_digest(trial))
        finally:
            esapi.flush_context(trial)

    def _create_key(self, selection: PcrSelection) -> tuple[KeyBlobs, bytes]:
        esapi = self._esapi
        assert esapi is not None
        template = TPM2B_PUBLIC.parse(
            "ecc256:ecdsa-sha256", objectAttributes=_SIGNING_KEY_ATTRIBUTES
        )
        template.publicArea.authPolicy = self._policy_digest(selection)
        private, public, *_ = esapi.create(self._srk, None, template)
        blobs = KeyBlobs(public.marshal(), private.marshal(), selection)
        return blobs, _public_der(public)

    def _sign(self, blobs: KeyBlobs, digest: bytes) -> bytes:
        esapi = self._esapi
        assert esapi is not None
        public, _ = TPM2B_PUBLIC.unmarshal(blobs.public)
        private, _ = TPM2B_PRIVATE.unmarshal(blobs.private)
        key = esapi.load(self._srk, private, public)
        try:
            session = _start_session(esapi, TPM2_SE.POLICY)
            try:
                esapi.policy_pcr(session, None, blobs.pcr_selection.to_tpm())
                scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.ECDSA)
                scheme.details.any.hashAlg = TPM2_ALG.SHA256
                ticket = TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.NULL)
                signature = esapi.sign(key, digest, scheme, ticket, session1=session)
            finally:
                _flush_quietly(esapi, session)
        finally:
            _flush_quietly(esapi, key)
        r = int.from_bytes(bytes(signature.signature.ecdsa.signatureR), "big")
        s = int.from_bytes(bytes(signature.signature.ecdsa.signatureS), "big")
        return asym_utils.encode_dss_signature(r, s)

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


def _flush_quietly(esapi: ESAPI, handle: Any) -> None:
    try:
        esapi.flush_context(handle)
    except TSS2_Exception as err:
        # After a reset the handle is already gone; nothing is left loaded.
        _LOGGER.debug("flushing TPM handle failed: %s", err)
