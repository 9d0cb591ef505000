"""PKCS #10 certificate requests signed by a key that never leaves the TPM,
and the certificate chains a PZH returns.

cryptography's CSR builder needs the private key object, so the request is
assembled here in DER (RFC 2986): the CertificationRequestInfo is encoded,
hashed and signed by the key service, and the signature is wrapped around
it.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from .algorithms import SignAlgorithm
from .errors import InvalidArgument

MAX_SUBJECT_LENGTH = 1024  # characters of the RFC 4514 subject text
MAX_CHAIN_SIZE = 64 * 1024  # bytes
MAX_CHAIN_LENGTH = 8  # certificates

# AlgorithmIdentifier DER per signature algorithm. ECDSA (RFC 5758) and
# Ed25519 (RFC 8410) have no parameters; PKCS #1 v1.5 (RFC 8017) has NULL.
_ALGORITHM_IDENTIFIERS = {
    "ecdsa-sha256": bytes.fromhex("300a06082a8648ce3d040302"),
    "ecdsa-sha384": bytes.fromhex("300a06082a8648ce3d040303"),
    "rsa-pkcs1v15-sha256": bytes.fromhex("300d06092a864886f70d01010b0500"),
    "rsa-pkcs1v15-sha384": bytes.fromhex("300d06092a864886f70d01010c0500"),
    "ed25519": bytes.fromhex("300506032b6570"),
}
CSR_ALGORITHMS = tuple(_ALGORITHM_IDENTIFIERS)


def _length(size: int) -> bytes:
    if size < 0x80:
        return bytes([size])
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _length(len(content)) + content


def parse_subject(subject: str) -> x509.Name:
    """Parse an RFC 4514 subject such as ``CN=pzp,O=webinos``."""
    if not isinstance(subject, str) or not 1 <= len(subject) <= MAX_SUBJECT_LENGTH:
        raise InvalidArgument(
            f"subject must be 1 to {MAX_SUBJECT_LENGTH} characters of RFC 4514 "
            "text, for example 'CN=car-pzp,O=webinos'"
        )
    try:
        name = x509.Name.from_rfc4514_string(subject)
    except ValueError as err:
        detail = f" ({err})" if str(err) else ""
        raise InvalidArgument(
            f"subject {subject!r} is invalid{detail}; write RFC 4514 text such as "
            "'CN=car-pzp,O=webinos'"
        ) from None
    if len(name) == 0:
        raise InvalidArgument(f"subject {subject!r} is empty; give at least CN=...")
    return name


def request_info(subject: x509.Name, public_key_der: bytes) -> bytes:
    """Return the DER CertificationRequestInfo (version 0, no attributes)."""
    version = _tlv(0x02, b"\x00")
    attributes = _tlv(0xA0, b"")
    return _tlv(0x30, version + subject.public_bytes() + public_key_der + attributes)


def assemble(info: bytes, algorithm: SignAlgorithm, signature: bytes) -> bytes:
    """Wrap a CertificationRequestInfo and its signature into a DER request."""
    identifier = _ALGORITHM_IDENTIFIERS[algorithm.name]
    return _tlv(0x30, info + identifier + _tlv(0x03, b"\x00" + signature))


def check_request(der: bytes) -> x509.CertificateSigningRequest:
    """Parse the request back and check its signature before it leaves the service."""
    request = x509.load_der_x509_csr(der)
    if not request.is_signature_valid:
        raise InvalidArgument("the TPM signature on the certificate request is invalid")
    return request


def parse_chain(data: bytes) -> list[x509.Certificate]:
    """Parse a PEM bundle or concatenated DER certificates, leaf first.

    Raises:
        InvalidArgument: the data is empty, too large, not certificates,
            or a certificate is not issued by the next one.
    """
    if not data or len(data) > MAX_CHAIN_SIZE:
        raise InvalidArgument(
            f"certificate chain is {len(data)} bytes; give 1 to {MAX_CHAIN_SIZE} "
            "bytes of PEM or DER certificates, leaf first"
        )
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            chain = x509.load_pem_x509_certificates(data)
        else:
            chain = [x509.load_der_x509_certificate(part) for part in _split_der(data)]
    except ValueError as err:
        raise InvalidArgument(f"certificate chain is not valid PEM or DER: {err}") from None
    if len(chain) > MAX_CHAIN_LENGTH:
        raise InvalidArgument(
            f"certificate chain has {len(chain)} certificates; at most "
            f"{MAX_CHAIN_LENGTH} are accepted"
        )
    for position, (child, issuer) in enumerate(zip(chain, chain[1:])):
        try:
            child.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise InvalidArgument(
                f"certificate {position} of the chain is not issued by certificate "
                f"{position + 1}; order the chain leaf first, each followed by its issuer"
            ) from None
    return chain


def chain_pem(chain: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)


def leaf_public_key_der(chain: list[x509.Certificate]) -> bytes:
    return chain[0].public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _split_der(data: bytes) -> list[bytes]:
    """Split concatenated DER SEQUENCEs at their outer lengths."""
    parts = []
    offset = 0
    while offset < len(data):
        if data[offset] != 0x30 or offset + 2 > len(data):
            raise ValueError(f"no DER SEQUENCE at byte {offset}")
        first = data[offset + 1]
        header = 2
        if first < 0x80:
            size = first
        else:
            count = first & 0x7F
            if not 1 <= count <= 3 or offset + 2 + count > len(data):
                raise ValueError(f"bad DER length at byte {offset}")
            size = int.from_bytes(data[offset + 2 : offset + 2 + count], "big")
            header += count
        end = offset + header + size
        if end > len(data):
            raise ValueError(f"DER certificate at byte {offset} is truncated")
        parts.append(data[offset:end])
        offset = end
    return parts
