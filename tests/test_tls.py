"""TLS with a certificate made by the test, and the --no-auth mode."""

from __future__ import annotations

import datetime as dt
import ipaddress
import sys

import cloudpickle
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fabric import errors
from fabric.client import Client
from fabric.credentials import is_loopback
from fabric.testing import wait_until

pytestmark = pytest.mark.processes
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def inc(x):
    return x + 1


def self_signed(dir_) -> tuple[str, str]:
    """A certificate for 127.0.0.1 / localhost and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fabric-test-hub")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = dir_ / "hub.crt", dir_ / "hub.key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_tls_hub_with_a_generated_certificate(local_fabric, tmp_path):
    cert, key = self_signed(tmp_path)
    fab = local_fabric(["secure"], workers=1, hub_args=("--tls-cert", cert, "--tls-key", key),
                       endpoint_args=("--tls-ca", cert))
    with Client(fab.address, tls_ca=cert) as c:
        c.wait_for_endpoints(1, timeout=30)
        assert c.get_result(c.run(1, function_id=c.register_function(inc)), timeout=30) == 2
    # Plaintext cannot talk to a TLS hub.
    with pytest.raises(errors.HubUnavailable):
        with Client(fab.address, retry_timeout=1.0) as plain:
            plain.status()


def test_no_auth_hub_needs_no_token(local_fabric):
    fab = local_fabric(["open"], workers=1, hub_args=("--no-auth",))
    with Client(fab.address, token="") as c:  # no token at all
        c.wait_for_endpoints(1, timeout=30)
        assert c.get_result(c.run(41, function_id=c.register_function(inc)), timeout=30) == 42
    assert any("--no-auth" in line for line in fab.hub.lines)  # it warned


def test_loopback_detection() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "localhost", "::1", "[::1]", "127.9.9.9"]))
    assert not any(map(is_loopback, ["0.0.0.0", "10.0.0.1", "example.org", "::"]))


def digest_and_reverse(data):
    import hashlib

    return hashlib.sha256(data).hexdigest(), data[::-1]


def test_blobs_over_tls_with_the_ca_from_the_environment(local_fabric, tmp_path, monkeypatch):
    """$FABRIC_TLS_CA (no --tls-ca anywhere) for the endpoint and the client; a 5 MiB
    argument and a 5 MiB result travel as blobs, over TLS, both ways: the client's
    PutBlob/GetBlob on its channel, the endpoint's on its separate transfer channel."""
    import hashlib
    import os
    import sqlite3

    cert, key = self_signed(tmp_path)
    fab = local_fabric(["secure"], workers=1, env={"FABRIC_TLS_CA": cert},
                       hub_args=("--tls-cert", cert, "--tls-key", key))
    monkeypatch.setenv("FABRIC_TLS_CA", cert)
    data = os.urandom(5 << 20)
    with Client(fab.address) as c:
        c.wait_for_endpoints(1, timeout=30)
        deleted = c.status().counters["blobs_deleted"]
        tid = c.run(data, function_id=c.register_function(digest_and_reverse))
        assert c.get_result(tid, timeout=60) == (hashlib.sha256(data).hexdigest(), data[::-1])
        # The arguments went as a blob: it is deleted once the task is done.
        wait_until(lambda: c.status().counters["blobs_deleted"] > deleted, 30,
                   "the arguments' blob to be deleted")
    with sqlite3.connect(f"file:{fab.store}?mode=ro", uri=True) as db:
        (value_blob,), = db.execute("SELECT value_blob FROM tasks WHERE task_id=?",
                                    (tid,)).fetchall()
    assert value_blob  # and so did the result


def test_a_wrong_ca_is_refused_by_client_and_endpoint(local_fabric, tmp_path):
    cert, key = self_signed(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    wrong, _ = self_signed(other)  # same names, another key: not the hub's issuer
    fab = local_fabric([], workers=1, hub_args=("--tls-cert", cert, "--tls-key", key))
    with pytest.raises(errors.HubUnavailable):
        with Client(fab.address, tls_ca=wrong, retry_timeout=1.0) as c:
            c.status()
    ep = fab.start_endpoint("doubter", "--tls-ca", wrong)
    ep.wait_for(r"fabric\.endpoint: .*CERTIFICATE_VERIFY_FAILED", 30)  # says why it cannot
    with Client(fab.address, tls_ca=cert) as c:  # the right CA works, and the hub never
        assert [e.name for e in c.endpoints() if e.online] == []  # saw the doubter connect
