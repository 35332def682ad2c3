"""Self-signed TLS certificates for a local Flower federation (tests and prototyping).

A certificate authority (``ca.crt``, ``ca.key``) and a server certificate for the SuperLink
(``server.pem``, ``server.key``) signed by it, valid for ``localhost`` and ``127.0.0.1``: what
Flower's TLS guide (``how-to-enable-tls-connections``) passes to ``flower-superlink
--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile``, to ``flower-supernode --root-certificates``
and to the ``flwr`` CLI (``root-certificates``). Made with the ``cryptography`` package (a
Flower dependency) instead of Flower's example shell script; for a real deployment use your
organisation's certificates.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["Certificates", "make_certificates", "make_node_keys"]


@dataclass(frozen=True)
class Certificates:
    """Paths of the files :func:`make_certificates` wrote."""

    ca: Path
    server_cert: Path
    server_key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def make_certificates(folder: Path, *, days: int = 2) -> Certificates:
    """Write a CA and a SuperLink certificate for ``localhost``/``127.0.0.1`` into
    ``folder`` (created); valid from an hour ago for ``days`` days."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(hours=1), now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fedbackdoor local CA"))
        .issuer_name(_name("fedbackdoor local CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = Certificates(folder / "ca.crt", folder / "server.pem", folder / "server.key")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(ca_key, folder / "ca.key")
    files.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, files.server_key)
    return files


def make_node_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """An EC key pair for SuperNode authentication (Flower's ``--enable-supernode-auth``):
    ``<name>`` (private, PEM; ``flower-supernode --auth-supernode-private-key``) and
    ``<name>.pub`` (public, OpenSSH format; ``flwr supernode register``), as Flower's
    authentication example makes them with ``ssh-keygen -t ecdsa -b 384``."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / name, folder / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + b"\n"
    )
    return private, public
