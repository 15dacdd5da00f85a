"""TLS: with a certificate and key the gateway speaks HTTPS and its cookies are Secure."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from http.cookies import SimpleCookie
from pathlib import Path

import aiohttp
import pytest

from tests.gateway.stack import Stack


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    openssl = shutil.which("openssl")
    if openssl is not None:
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True,
        )  # fmt: skip
        return cert, key
    pytest.importorskip("cryptography")
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


async def test_tls_origin_secure_host_cookie_and_hsts(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))
    async with Stack(tls=(cert, key)) as stack:
        assert stack.origin.startswith("https://")
        connector = aiohttp.TCPConnector(ssl=trust)
        async with stack.client(connector=connector) as client:
            async with client.post(
                stack.url("/login"),
                data={"token": stack.token},
                headers={"Origin": stack.origin},
                allow_redirects=False,
            ) as resp:
                assert resp.status == 303
                cookies = SimpleCookie()
                for header in resp.headers.getall("Set-Cookie"):
                    cookies.load(header)
            session = cookies["__Host-hive_session"]
            assert session["secure"] is True
            assert session["httponly"] is True
            assert session["samesite"] == "Strict"
            assert cookies["hive_csrf"]["secure"] is True
            async with client.get(stack.url("/api/agents")) as resp:
                assert resp.status == 200
                assert resp.headers["Strict-Transport-Security"].startswith("max-age=")
                assert (await resp.json())["principal"] == "operator"
            # The http:// origin is not this gateway's: a login from it is refused.
            async with client.post(
                stack.url("/login"),
                data={"token": stack.token},
                headers={"Origin": stack.origin.replace("https://", "http://")},
                allow_redirects=False,
            ) as resp:
                assert resp.status == 403
