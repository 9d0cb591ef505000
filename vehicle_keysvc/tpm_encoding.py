"""Conversions between TPM 2.0 structures and standard encodings.

Signature schemes and signatures (DER ECDSA, PKCS #1 octets), the public
areas of the OEM policy key and the release counter, and the padding
that swtpm needs for ECC keys read from PEM.
"""

from __future__ import annotations

import os

# By default ESYS prints every TPM error to stderr, but the service logs
# errors itself. Must be set before the TSS libraries are loaded.
os.environ.setdefault("TSS2_LOG", "all+NONE")

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import utils as asym_utils  # noqa: E402
from tpm2_pytss.constants import (  # noqa: E402
    TPM2_ALG,
    TPM2_ECC,
    TPM2_NT,
    TPMA_NV,
    TPMA_OBJECT,
)
from tpm2_pytss.types import (  # noqa: E402
    TPM2B_NV_PUBLIC,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE,
    TPMS_NV_PUBLIC,
    TPMT_SIG_SCHEME,
    TPMT_SIGNATURE,
)

from .algorithms import SignAlgorithm  # noqa: E402
from .errors import InvalidArgument  # noqa: E402

# The release counter of signed policies: an NV counter that anyone may
# read (empty auth, for PolicyNV) and only the owner may increment. The
# TPM name covers these attributes, and signed policies cover the name.
COUNTER_ATTRIBUTES = (
    TPMA_NV.OWNERWRITE
    | TPMA_NV.AUTHREAD
    | TPMA_NV.NO_DA
    | (int(TPM2_NT.COUNTER) << int(TPMA_NV.TPM2_NT_SHIFT))
)


def counter_public(index: int, written: bool = True) -> TPM2B_NV_PUBLIC:
    """Return the NV public area of the release counter at ``index``."""
    attributes = COUNTER_ATTRIBUTES | (TPMA_NV.WRITTEN if written else 0)
    return TPM2B_NV_PUBLIC(
        nvPublic=TPMS_NV_PUBLIC(
            nvIndex=index,
            nameAlg=TPM2_ALG.SHA256,
            attributes=attributes,
            dataSize=8,
        )
    )


def oem_public_area(public_pem: bytes) -> TPM2B_PUBLIC:
    """Return the public area the OEM policy key is loaded with.

    Raises:
        InvalidArgument: the key is not an ECC P-256 public key.
    """
    try:
        key = serialization.load_pem_public_key(public_pem)
    except ValueError as err:
        raise InvalidArgument(f"the OEM policy key is not a PEM public key: {err}") from err
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
        key.curve, ec.SECP256R1
    ):
        raise InvalidArgument("the OEM policy key must be an ECC P-256 public key")
    public = TPM2B_PUBLIC.from_pem(
        public_pem,
        objectAttributes=TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.USERWITHAUTH,
    )
    pad_ecc_public(public)
    return public


_ECC_SIZES = {int(TPM2_ECC.NIST_P256): 32, int(TPM2_ECC.NIST_P384): 48}


def pad_ecc_public(public: TPM2B_PUBLIC) -> None:
    """Give an ECC point's coordinates the full size of the curve.

    tpm2-pytss 3.0 drops leading zero bytes when it reads a PEM key, and
    swtpm 0.7.1 rejects such a point (TPM_RC_KEY) in TPM2_LoadExternal
    and TPM2_Import, so about one key in 128 would fail.
    """
    area = public.publicArea
    if area.type != TPM2_ALG.ECC:
        return
    size = _ECC_SIZES[int(area.parameters.eccDetail.curveID)]
    area.unique.ecc.x = bytes(area.unique.ecc.x).rjust(size, b"\0")
    area.unique.ecc.y = bytes(area.unique.ecc.y).rjust(size, b"\0")


def pad_ecc_sensitive(public: TPM2B_PUBLIC, sensitive: TPM2B_SENSITIVE) -> None:
    """Give an ECC private scalar the full size of the curve (see above)."""
    area = public.publicArea
    if area.type != TPM2_ALG.ECC:
        return
    size = _ECC_SIZES[int(area.parameters.eccDetail.curveID)]
    composite = sensitive.sensitiveArea.sensitive
    composite.ecc = bytes(composite.ecc).rjust(size, b"\0")


_HASH_ALGS = {"sha256": TPM2_ALG.SHA256, "sha384": TPM2_ALG.SHA384}
_SCHEME_ALGS = {"ecdsa": TPM2_ALG.ECDSA, "rsassa": TPM2_ALG.RSASSA, "rsapss": TPM2_ALG.RSAPSS}


def sig_scheme(algorithm: SignAlgorithm | None) -> TPMT_SIG_SCHEME:
    family = algorithm.family if algorithm is not None else "ecdsa"
    hash_name = algorithm.hash_name if algorithm is not None else "sha256"
    if family not in _SCHEME_ALGS or hash_name is None:
        raise InvalidArgument(f"algorithm {algorithm} cannot run inside the TPM")
    scheme = TPMT_SIG_SCHEME(scheme=_SCHEME_ALGS[family])
    scheme.details.any.hashAlg = _HASH_ALGS[hash_name]
    return scheme


def encode_signature(signature: TPMT_SIGNATURE) -> bytes:
    """Return a DER ECDSA signature or the PKCS #1 octets of an RSA one."""
    if signature.sigAlg == TPM2_ALG.ECDSA:
        r = int.from_bytes(bytes(signature.signature.ecdsa.signatureR), "big")
        s = int.from_bytes(bytes(signature.signature.ecdsa.signatureS), "big")
        return asym_utils.encode_dss_signature(r, s)
    if signature.sigAlg == TPM2_ALG.RSAPSS:
        return bytes(signature.signature.rsapss.sig)
    return bytes(signature.signature.rsassa.sig)


def ecdsa_signature(der: bytes) -> TPMT_SIGNATURE:
    try:
        r, s = asym_utils.decode_dss_signature(der)
        r_bytes, s_bytes = r.to_bytes(32, "big"), s.to_bytes(32, "big")
    except (ValueError, OverflowError) as err:
        raise InvalidArgument(
            f"signed policy signature is not a DER ECDSA P-256 signature: {err}"
        ) from err
    signature = TPMT_SIGNATURE(sigAlg=TPM2_ALG.ECDSA)
    signature.signature.ecdsa.hash = TPM2_ALG.SHA256
    signature.signature.ecdsa.signatureR = r_bytes
    signature.signature.ecdsa.signatureS = s_bytes
    return signature
