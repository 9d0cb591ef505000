"""Signed PCR policies (PolicyAuthorize) that follow software updates.

A key created with an authorized policy has the authPolicy
``PolicyAuthorize(OEM key name, policyRef)`` instead of fixed PCR values.
For each software release the OEM signs an *approved policy*: the digest
of PolicyPCR over that release's PCR values, followed by PolicyNV on the
release counter. The device presents the signed policy, the TPM checks the
OEM signature (TPM2_VerifySignature gives a ticket) and TPM2_PolicyAuthorize
replaces the session digest with the key's authPolicy.

Rollback: plain PolicyAuthorize accepts every policy the OEM ever signed,
so the PCR values of an old, vulnerable release would unlock the key again.
Each approved policy therefore also contains ``PolicyNV(counter <= release)``
on a TPM NV counter (TPM_NT_COUNTER). Loading the policy of release N
raises the counter to N, and the TPM then rejects every policy of an older
release. The counter only counts up, so even the service cannot undo it.

The digests are computed here in software, following TPM 2.0 Library
Part 3 (TPM2_PolicyPCR, TPM2_PolicyNV, TPM2_PolicyAuthorize), so that the
OEM can sign without a TPM. The tests check them against a TPM trial
session.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from .errors import InvalidArgument

FORMAT = "vehicle-keysvc-signed-policy"
FORMAT_VERSION = 1

TPM_CC_POLICY_NV = 0x00000149
TPM_CC_POLICY_AUTHORIZE = 0x0000016A
TPM_CC_POLICY_PCR = 0x0000017F
TPM_EO_UNSIGNED_LE = 0x0009

# Owner NV index of the release counter (TCG Registry of Reserved TPM 2.0
# Handles: 0x01800000..0x01BFFFFF are for the owner).
DEFAULT_COUNTER_INDEX = 0x01800100
MAX_RELEASE = 2**32 - 1

_BANK_SIZES = {"sha1": 20, "sha256": 32, "sha384": 48}
_BANK_ALGS = {"sha1": 0x0004, "sha256": 0x000B, "sha384": 0x000C}
_ZERO_DIGEST = bytes(32)


def _sha256(*parts: bytes) -> bytes:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.digest()


def pcr_selection_bytes(bank: str, indices: tuple[int, ...]) -> bytes:
    """Marshal a TPML_PCR_SELECTION with one bank (3 bytes of PCR bitmap)."""
    bitmap = bytearray(3)
    for index in indices:
        bitmap[index // 8] |= 1 << (index % 8)
    return (
        (1).to_bytes(4, "big")
        + _BANK_ALGS[bank].to_bytes(2, "big")
        + bytes([3])
        + bytes(bitmap)
    )


def policy_pcr_digest(
    previous: bytes, bank: str, indices: tuple[int, ...], values: dict[int, bytes]
) -> bytes:
    """Extend a SHA-256 policy digest with TPM2_PolicyPCR over ``values``."""
    pcr_digest = _sha256(*(values[i] for i in sorted(indices)))
    return _sha256(
        previous,
        TPM_CC_POLICY_PCR.to_bytes(4, "big"),
        pcr_selection_bytes(bank, indices),
        pcr_digest,
    )


def policy_nv_digest(previous: bytes, nv_name: bytes, release: int) -> bytes:
    """Extend a policy digest with TPM2_PolicyNV(counter <= release)."""
    args = _sha256(
        release.to_bytes(8, "big"),
        (0).to_bytes(2, "big"),  # offset
        TPM_EO_UNSIGNED_LE.to_bytes(2, "big"),
    )
    return _sha256(previous, TPM_CC_POLICY_NV.to_bytes(4, "big"), args, nv_name)


def policy_authorize_digest(oem_key_name: bytes, policy_ref: bytes) -> bytes:
    """Return the authPolicy of a key authorized by the OEM key."""
    inner = _sha256(
        _ZERO_DIGEST, TPM_CC_POLICY_AUTHORIZE.to_bytes(4, "big"), oem_key_name
    )
    return _sha256(inner, policy_ref)


def counter_nv_name(index: int) -> bytes:
    """Return the TPM name of the release counter after its first increment.

    The name covers the NV public area, so it fixes the attributes the
    service defines the counter with (see ``tpm_encoding.COUNTER_ATTRIBUTES``).
    """
    from .tpm_encoding import counter_public

    return bytes(counter_public(index).get_name())


def oem_key_name(public_pem: bytes) -> bytes:
    """Return the TPM name of the OEM public key as the service loads it."""
    from .tpm_encoding import oem_public_area

    return bytes(oem_public_area(public_pem).get_name())


def check_policy_ref(text: str) -> bytes:
    data = text.encode()
    if not 1 <= len(data) <= 32:
        raise InvalidArgument(
            f"policy reference {text!r} is invalid: give 1 to 32 bytes of UTF-8 "
            "that name the product, for example 'webinos-headunit-A'"
        )
    return data


@dataclass(frozen=True)
class PolicySettings:
    """The service's [policy] settings for keys with an authorized policy."""

    oem_public_key: Path  # PEM, ECC P-256
    policy_ref: bytes  # names the product; part of every authorized key's policy
    signed_policy: Path  # where the signed policy of the running release is kept
    counter_index: int = DEFAULT_COUNTER_INDEX


@dataclass(frozen=True)
class SignedPolicy:
    """An approved policy for one software release, signed by the OEM."""

    policy_ref: bytes
    release: int
    bank: str
    indices: tuple[int, ...]
    pcr_values: dict[int, bytes]
    counter_index: int
    approved_policy: bytes
    signature: bytes  # DER ECDSA over SHA-256(approved_policy || policy_ref)

    @property
    def pcrs(self) -> str:
        return f"{self.bank}:{','.join(str(i) for i in self.indices)}"

    def signed_data(self) -> bytes:
        return self.approved_policy + self.policy_ref

    def expected_digest(self) -> bytes:
        digest = policy_pcr_digest(_ZERO_DIGEST, self.bank, self.indices, self.pcr_values)
        return policy_nv_digest(digest, counter_nv_name(self.counter_index), self.release)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "policy_ref": self.policy_ref.decode(),
                "release": self.release,
                "pcrs": self.pcrs,
                "pcr_values": {str(i): v.hex() for i, v in sorted(self.pcr_values.items())},
                "release_counter": f"0x{self.counter_index:08x}",
                "approved_policy": self.approved_policy.hex(),
                "signature": base64.b64encode(self.signature).decode(),
            },
            indent=2,
        ) + "\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedPolicy:
        """Parse a signed policy file and check that its digest matches its values.

        Raises:
            InvalidArgument: the file is malformed, or its approved policy
                is not the digest of its PCR values and release.
        """
        try:
            raw = json.loads(data.decode("utf-8"))
            if raw.get("format") != FORMAT or raw.get("version") != FORMAT_VERSION:
                raise ValueError(
                    f"not a {FORMAT} version {FORMAT_VERSION} file"
                )
            match = re.fullmatch(r"(sha1|sha256|sha384):(\d{1,2}(?:,\d{1,2})*)", raw["pcrs"])
            if not match:
                raise ValueError(f"pcrs {raw['pcrs']!r} is not BANK:INDICES")
            bank = match.group(1)
            indices = tuple(sorted({int(i) for i in match.group(2).split(",")}))
            if indices[-1] > 23:
                raise ValueError(f"pcrs {raw['pcrs']!r}: indices must be 0..23")
            values = {int(k): bytes.fromhex(v) for k, v in raw["pcr_values"].items()}
            if set(values) != set(indices):
                raise ValueError("pcr_values must give exactly the PCRs in pcrs")
            if any(len(v) != _BANK_SIZES[bank] for v in values.values()):
                raise ValueError(f"each {bank} PCR value must be {_BANK_SIZES[bank]} bytes")
            release = raw["release"]
            if not isinstance(release, int) or not 1 <= release <= MAX_RELEASE:
                raise ValueError(f"release {release!r} must be an integer 1..{MAX_RELEASE}")
            policy = cls(
                policy_ref=check_policy_ref(raw["policy_ref"]),
                release=release,
                bank=bank,
                indices=indices,
                pcr_values=values,
                counter_index=int(raw["release_counter"], 16),
                approved_policy=bytes.fromhex(raw["approved_policy"]),
                signature=base64.b64decode(raw["signature"], validate=True),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise InvalidArgument(f"signed policy is malformed: {err}") from err
        if policy.approved_policy != policy.expected_digest():
            raise InvalidArgument(
                "signed policy is inconsistent: its approved_policy is not the "
                "digest of its PCR values and release; sign it again"
            )
        return policy


def sign_policy(
    oem_private_key: ec.EllipticCurvePrivateKey,
    policy_ref: bytes,
    release: int,
    bank: str,
    indices: tuple[int, ...],
    pcr_values: dict[int, bytes],
    counter_index: int = DEFAULT_COUNTER_INDEX,
) -> SignedPolicy:
    """Compute the approved policy of a release and sign it with the OEM key."""
    if not isinstance(oem_private_key, ec.EllipticCurvePrivateKey) or not isinstance(
        oem_private_key.curve, ec.SECP256R1
    ):
        raise InvalidArgument("the OEM policy key must be an ECC P-256 private key")
    if not 1 <= release <= MAX_RELEASE:
        raise InvalidArgument(f"release {release} is invalid: use 1..{MAX_RELEASE}")
    unsigned = SignedPolicy(
        policy_ref, release, bank, indices, dict(pcr_values), counter_index, b"", b""
    )
    approved = unsigned.expected_digest()
    signature = oem_private_key.sign(approved + policy_ref, ec.ECDSA(hashes.SHA256()))
    return SignedPolicy(
        policy_ref, release, bank, indices, dict(pcr_values), counter_index,
        approved, signature,
    )
