"""Shared fixtures, all built from the `tiny` preset: a seeded model, its ONNX export, synthetic videos, a Triton
repository written by the CLI's `write_repository`, one real Triton server per session and a client for it."""

from __future__ import annotations

from pathlib import Path

import pytest

import prost

SERVER_LOG_TAIL = 60  # lines of the Triton log attached to a failing test that used the server
_SERVER = pytest.StashKey()


@pytest.fixture(scope="session")
def tiny_model():
    """prost.create_model("tiny", seed=0) in eval mode."""
    return prost.create_model("tiny", seed=0).eval()


@pytest.fixture(scope="session")
def onnx_dir(tiny_model, tmp_path_factory) -> Path:
    """`export_onnx` of the tiny model: the three ONNX graphs and manifest.json."""
    from prost_export.onnx import export_onnx

    return export_onnx(tiny_model, tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    """A small synthetic dataset root: videos/*.mp4 and captions.jsonl."""
    from prost.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("synthetic"), videos=6, seed=0, workers=1)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> tuple[Path, Path]:
    """(run directory, dataset): a tiny model trained for 300 steps on 200 synthetic videos (about a minute)."""
    from prost.data.synthetic import generate
    from prost_cli.main import main

    root = tmp_path_factory.mktemp("trained")
    data = generate(root / "data", videos=200, seed=11, workers=1)
    assert main(["train", "--data", str(data), "--preset", "tiny", "--out", str(root / "run"), "--max-steps", "300",
                 "--epochs", "75", "--batch-size", "32", "--precision", "bf16", "--no-progress"]) == 0
    return root / "run", data


@pytest.fixture(scope="session")
def synthetic_videos(synthetic_dataset) -> list[Path]:
    """The dataset's mp4 files, sorted."""
    return sorted((synthetic_dataset / "videos").glob("*.mp4"))


@pytest.fixture(scope="session")
def model_repository(onnx_dir, tmp_path_factory) -> Path:
    """The cpu-variant Triton repository of the tiny export, written as `prost repository build` writes it."""
    from prost_model_repository.writer import write_repository

    return write_repository(onnx_dir, tmp_path_factory.mktemp("repository") / "models", "cpu")


@pytest.fixture(scope="session")
def triton_server(model_repository, tmp_path_factory, request):
    """One real tritonserver per session on free ports; fails (never skips) when it cannot start."""
    from prost.errors import RepositoryError
    from prost_model_repository.server import TritonServer, free_ports

    grpc_port, http_port, metrics_port = free_ports(3)
    server = TritonServer(model_repository, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port,
                          log_dir=tmp_path_factory.mktemp("triton"), ready_timeout=180, grace=15)
    try:
        server.start()
    except RepositoryError as exc:
        tail = "\n".join(server.log_text().splitlines()[-SERVER_LOG_TAIL:])
        pytest.fail(f"tritonserver did not start: {exc}\n--- {server.log_path} ---\n{tail}", pytrace=False)
    request.config.stash[_SERVER] = server
    print(f"\ntritonserver ready in {server.startup_seconds:.1f} s at {server.url}; log {server.log_path}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def client(triton_server):
    """A ProstClient holding the server's repository key."""
    from prost_client.client import ProstClient

    with ProstClient(triton_server.url, timeout=60.0, repository_key=triton_server.repository_key) as c:
        c.wait_ready(60)
        yield c


@pytest.fixture(scope="session")
def published_gallery(client, model_repository, synthetic_videos):
    """The synthetic videos published as a gallery version; (version, video ids, objects, events) as encoded."""
    ids = [p.stem for p in synthetic_videos]
    objects, events = client.encode_videos(synthetic_videos)
    version = client.publish_prototypes(ids, objects, events, repository=model_repository)
    return version, ids, objects, events


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the end of the Triton log to a failing test that used the server."""
    outcome = yield
    report = outcome.get_result()
    server = item.config.stash.get(_SERVER, None)
    if report.failed and server is not None and "triton_server" in getattr(item, "fixturenames", ()):
        report.sections.append(("tritonserver log (tail)",
                                "\n".join(server.log_text().splitlines()[-SERVER_LOG_TAIL:])))
