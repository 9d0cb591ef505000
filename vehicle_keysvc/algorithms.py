"""Key types and signature algorithms, and which algorithm fits which key.

ECC and RSA keys are created inside the TPM. Ed25519 is not a TPM 2.0
algorithm (TPM 2.0 Library Part 2 lists no EdDSA curve), so an ``ed25519``
key is a 32-byte seed kept in a TPM sealed data object and used in software.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidArgument


@dataclass(frozen=True)
class SignAlgorithm:
    """A signature algorithm as D-Bus callers name it."""

    name: str
    family: str  # "ecdsa", "rsassa" (PKCS #1 v1.5), "rsapss" or "ed25519"
    hash_name: str | None  # "sha256" or "sha384"; None for ed25519
    digest_size: int | None  # bytes; None: the algorithm takes the message

    @property
    def takes_message(self) -> bool:
        return self.digest_size is None


@dataclass(frozen=True)
class KeyType:
    """A key type: its TPM template and the algorithms it signs with."""

    name: str
    tpm_template: str | None  # tpm2-pytss template text; None: sealed seed
    algorithms: tuple[str, ...]
    csr_algorithm: str  # algorithm used to sign a PKCS #10 request

    @property
    def sealed(self) -> bool:
        return self.tpm_template is None


SIGN_ALGORITHMS: dict[str, SignAlgorithm] = {
    a.name: a
    for a in (
        SignAlgorithm("ecdsa-sha256", "ecdsa", "sha256", 32),
        SignAlgorithm("ecdsa-sha384", "ecdsa", "sha384", 48),
        SignAlgorithm("rsa-pkcs1v15-sha256", "rsassa", "sha256", 32),
        SignAlgorithm("rsa-pkcs1v15-sha384", "rsassa", "sha384", 48),
        SignAlgorithm("rsa-pss-sha256", "rsapss", "sha256", 32),
        SignAlgorithm("rsa-pss-sha384", "rsapss", "sha384", 48),
        SignAlgorithm("ed25519", "ed25519", None, None),
    )
}

_ECDSA = ("ecdsa-sha256", "ecdsa-sha384")
_RSA = (
    "rsa-pkcs1v15-sha256",
    "rsa-pkcs1v15-sha384",
    "rsa-pss-sha256",
    "rsa-pss-sha384",
)

KEY_TYPES: dict[str, KeyType] = {
    t.name: t
    for t in (
        KeyType("ecc-p256", "ecc256", _ECDSA, "ecdsa-sha256"),
        KeyType("ecc-p384", "ecc384", _ECDSA, "ecdsa-sha384"),
        KeyType("rsa-2048", "rsa2048", _RSA, "rsa-pkcs1v15-sha256"),
        KeyType("rsa-3072", "rsa3072", _RSA, "rsa-pkcs1v15-sha256"),
        KeyType("ed25519", None, ("ed25519",), "ed25519"),
    )
}

# Largest message an ed25519 Sign accepts, in bytes. Ed25519 hashes the
# whole message, so this only bounds the size of one D-Bus request.
MAX_MESSAGE_SIZE = 64 * 1024


def key_type(name: str) -> KeyType:
    """Return the key type called ``name``, or raise InvalidArgument."""
    if name not in KEY_TYPES:
        raise InvalidArgument(
            f"key type {name!r} is not supported; use one of {', '.join(KEY_TYPES)}"
        )
    return KEY_TYPES[name]


def algorithm_for(key: KeyType, name: str) -> SignAlgorithm:
    """Return the algorithm ``name`` if it fits ``key``, else raise InvalidArgument."""
    if name not in SIGN_ALGORITHMS:
        raise InvalidArgument(
            f"algorithm {name!r} is not supported; use one of "
            f"{', '.join(SIGN_ALGORITHMS)}"
        )
    if name not in key.algorithms:
        raise InvalidArgument(
            f"algorithm {name!r} does not fit a {key.name} key; use one of "
            f"{', '.join(key.algorithms)}"
        )
    return SIGN_ALGORITHMS[name]


def check_data(algorithm: SignAlgorithm, data: bytes) -> None:
    """Check the digest length, or the message size for ed25519."""
    if algorithm.digest_size is None:
        if len(data) > MAX_MESSAGE_SIZE:
            raise InvalidArgument(
                f"message is {len(data)} bytes; {algorithm.name} accepts at most "
                f"{MAX_MESSAGE_SIZE} bytes"
            )
        return
    if len(data) != algorithm.digest_size:
        raise InvalidArgument(
            f"digest is {len(data)} bytes; {algorithm.name} needs a "
            f"{algorithm.digest_size}-byte digest"
        )
