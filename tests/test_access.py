"""Access: gRPC over TLS (a self-signed certificate made here), mutual TLS, and the optional inference key, each
refused without and served with, through a real tritonserver."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from prost_client import errors, wire
from prost_client.client import ProstClient
from prost_model_repository.server import TLS, TritonServer, free_ports

KEY = "inference-secret"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key: the server's, the CA clients trust, and (mutual TLS)
    the certificate clients present."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def serve(repository: Path, tmp_path: Path, **options) -> TritonServer:
    grpc, http, metrics = free_ports(3)
    return TritonServer(repository, grpc_port=grpc, http_port=http, metrics_port=metrics, log_dir=tmp_path / "logs",
                        ready_timeout=180, grace=10, **options)


def test_tls_and_the_inference_key_refuse_without_and_serve_with(model_repository, certificate, tmp_path):
    cert, key = certificate
    with serve(model_repository, tmp_path, tls=TLS(cert, key), inference_key=KEY) as server:
        assert server.http_url.startswith("http://127.0.0.1:")  # plaintext HTTP stays on this machine
        trusted = wire.TLS(ca=cert)
        with ProstClient(server.url, tls=trusted, inference_key=KEY, timeout=30) as client:
            assert len(client.search("a red circle moves left", top_k=2)[0]) <= 2
        with ProstClient(server.url, tls=trusted, timeout=10) as keyless:
            with pytest.raises(errors.PermissionDeniedError, match="--inference-key"):
                keyless.search("a red circle")
        with ProstClient(server.url, inference_key=KEY, timeout=3, retries=0) as plaintext:
            with pytest.raises(errors.ClientError):
                plaintext.search("a red circle")
        result = subprocess.run([str(Path(sys.executable).parent / "prost-client"), "--url", server.url, "--tls-ca",
                                 str(cert), "search", "a blue square"], capture_output=True, text=True, timeout=120,
                                env={**os.environ, "PROST_INFERENCE_KEY": KEY})
        assert result.returncode == 0 and "result(s)" in result.stdout, result.stderr


def test_mutual_tls_needs_a_client_certificate(model_repository, certificate, tmp_path):
    cert, key = certificate
    with serve(model_repository, tmp_path, tls=TLS(cert, key, ca=cert)) as server:
        with ProstClient(server.url, tls=wire.TLS(ca=cert, cert=cert, key=key), timeout=30) as client:
            client.search("a red circle")
        with ProstClient(server.url, tls=wire.TLS(ca=cert), timeout=5, retries=0) as anonymous:
            with pytest.raises(errors.ClientError):
                anonymous.search("a red circle")
