"""Reliability suite (`make reliability`): malformed requests, sustained load, faults under load, a publish under
load and the access controls, against `prost serve --restart-on-crash` on a tiny random-weight model. Writes
report.md and report.json into --out. All traffic stays on 127.0.0.1; every loop is bounded in requests and time.

    .venv/bin/python bench/reliability.py [--out reliability] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

sys.path.insert(0, str(Path(__file__).parent))
from loadgen import closed_loop  # noqa: E402

import prost  # noqa: E402
from prost.gallery import build as B  # noqa: E402
from prost_client import errors, protocol as P, wire  # noqa: E402
from prost_client.client import AsyncProstClient, ProstClient  # noqa: E402
from prost_export.onnx import export_onnx  # noqa: E402
from prost_export.specs import graph_specs  # noqa: E402
from prost_model_repository import storage  # noqa: E402
from prost_model_repository.server import TLS, TritonServer, free_ports  # noqa: E402
from prost_model_repository.watchdog import live_stubs  # noqa: E402
from prost_model_repository.writer import write_repository  # noqa: E402

PYTHON_MODELS = (P.GALLERY_MODEL, P.TEXT_MODEL, P.TOKENIZER_MODEL)  # whose stubs the faults kill (cpu variant)
FULL = {"load_seconds": 60, "warmup_seconds": 15, "load_callers": 64, "fault_seconds": 20, "fault_callers": 16,
        "videos": 2000, "request_timeout": 5}
SMOKE = {"load_seconds": 3, "warmup_seconds": 1, "load_callers": 16, "fault_seconds": 7, "fault_callers": 8,
         "videos": 64, "request_timeout": 3}


class Served:
    """`prost serve --restart-on-crash` as a subprocess on free ports, with its key and log."""

    def __init__(self, repository: Path, work: Path, request_timeout: float) -> None:
        self.repository, self.log = repository, work / "serve.err"
        ports = free_ports(3)
        self.url = f"127.0.0.1:{ports[0]}"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "prost_cli.main", "serve", "--repository", str(repository), "--grpc-port",
                 str(ports[0]), "--http-port", str(ports[1]), "--metrics-port", str(ports[2]), "--restart-on-crash",
                 "--stub-watchdog", "1", "--request-timeout", str(request_timeout), "--grace", "8", "--log-dir",
                 str(work / "logs")], stderr=log)
        self.wait_for("ready in")
        self.key = (repository / storage.KEY_FILE).read_text().strip()

    def wait_for(self, text: str, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prost serve: no {text!r}:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def processes(self) -> dict[int, str]:
        """tritonserver and its python-backend stubs (live processes naming the repository): pid -> command line."""
        found = {}
        for entry in Path("/proc").iterdir():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                state = (entry / "stat").read_text().split(") ")[-1][:1]
            except (OSError, ValueError):
                continue
            if str(self.repository) in cmdline and state != "Z" and ("tritonserver " in cmdline or "_stub " in cmdline):
                found[int(entry.name)] = cmdline
        return found

    def server_pid(self) -> int:
        return next(pid for pid, cmdline in self.processes().items() if "tritonserver " in cmdline)

    def rss_mib(self) -> float:
        """Resident memory of tritonserver and its stubs; a process that exits meanwhile (an unloaded version's
        stub) counts as gone."""
        total = 0
        for pid in self.processes():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
            except (OSError, StopIteration):
                continue
        return round(total / 1024, 1)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def publish_random_gallery(served: Served, videos: int, seed: int) -> float:
    """Publish `videos` random unit prototypes through ProstClient; seconds it took."""
    specs = graph_specs(prost.ProstConfig.from_dict(json.loads(
        (served.repository / storage.MANIFEST_FILE).read_text())["export"]["config"]))
    objects_spec, events_spec = specs["video_prototypes"].outputs
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal((videos, *spec.shape[1:]), dtype=np.float32) for spec in (objects_spec,
                                                                                             events_spec)]
    objects, events = (a / np.linalg.norm(a, axis=-1, keepdims=True) for a in arrays)
    started = time.monotonic()
    with ProstClient(served.url, repository_key=served.key, timeout=120) as client:
        client.publish_prototypes([f"v{seed}-{i}" for i in range(videos)], objects, events,
                                  repository=served.repository)
    return round(time.monotonic() - started, 2)


def two_stage_swap(served: Served, export: Path, work: Path, videos: int) -> dict:
    """`prost gallery build --repository` of a two-stage (indexed) version of `videos` random videos, searched in
    two stages whatever its size, then `prost-client reload`: the swap a large catalogue makes."""
    specs = graph_specs(prost.ProstConfig.from_dict(json.loads((export / "manifest.json").read_text())["config"]))
    rng = np.random.default_rng(3)
    objects, events = (rng.standard_normal((videos, *spec.shape[1:]), dtype=np.float32)
                       for spec in specs["video_prototypes"].outputs)
    prototypes = work / "two-stage.safetensors"
    B.write_prototypes(prototypes, B.ArrayPrototypes([f"ts{i}" for i in range(videos)], *(
        a / np.linalg.norm(a, axis=-1, keepdims=True) for a in (objects, events))))
    started = time.monotonic()
    build = subprocess.run([sys.executable, "-m", "prost_cli.main", "gallery", "build", "--prototypes",
                            str(prototypes), "--export", str(export), "--repository", str(served.repository),
                            "--index", "yes", "--exact-below", "1"], capture_output=True, text=True, timeout=600)
    if build.returncode:
        raise RuntimeError(f"prost gallery build failed: {build.stderr[-2000:]}")
    built = time.monotonic()
    with ProstClient(served.url, repository_key=served.key, timeout=120) as client:
        version = client.reload_gallery()
    swapped = time.monotonic()
    served_log = (work / "logs" / "tritonserver.log").read_text(errors="replace")
    return {"build_s": round(built - started, 2), "swap_s": round(swapped - built, 2), "version": version,
            "two_stage": f"prost_gallery version {version}: {videos} videos, two-stage search" in served_log}


def tensor(name: str, value: np.ndarray) -> grpcclient.InferInput:
    value = np.asarray(value)
    entry = grpcclient.InferInput(name, list(value.shape), "BYTES" if value.dtype == object else
                                  np_to_triton_dtype(value.dtype))
    entry.set_data_from_numpy(value)
    return entry


def malformed_requests(specs: dict) -> list[tuple[str, str, dict[str, np.ndarray]]]:
    """(model, what is wrong, inputs) for every public model and ensemble: at least 30 kinds."""
    (token_ids,), (frames,) = specs["text_prototypes"].inputs, specs["video_prototypes"].inputs
    phrases, sentence = specs["text_prototypes"].outputs
    w, d, np_ = token_ids.shape[1], sentence.shape[1], phrases.shape[1]
    ok_phrases, ok_sentence = np.ones((1, np_, d), np.float32) / d ** 0.5, np.ones((1, d), np.float32) / d ** 0.5
    objects, events = specs["video_prototypes"].outputs
    video = {P.OBJECT_PROTOTYPES: np.ones((1, *objects.shape[1:]), np.float32) / d ** 0.5,
             P.EVENT_PROTOTYPES: np.ones((1, *events.shape[1:]), np.float32) / d ** 0.5}
    text = np.array([[b"a red circle"]], dtype=object)

    def texts(*items: bytes) -> np.ndarray:
        return np.array([[item] for item in items], dtype=object)

    return [
        (P.TOKENIZER_MODEL, "empty text", {P.TEXT: texts(b"")}),
        (P.TOKENIZER_MODEL, "invalid UTF-8", {P.TEXT: texts(b"\xff\xfe\xfd")}),
        (P.TOKENIZER_MODEL, "100 KB text", {P.TEXT: texts(b"a" * 100_000)}),
        (P.TOKENIZER_MODEL, "TEXT as INT32", {P.TEXT: np.zeros((1, 1), np.int32)}),
        (P.TOKENIZER_MODEL, "unknown input name", {"INPUT": text}),
        (P.TOKENIZER_MODEL, "TEXT of shape [1, 2]", {P.TEXT: np.array([[b"a", b"b"]], dtype=object)}),
        (P.TOKENIZER_MODEL, "batch over max_batch_size", {P.TEXT: texts(*[b"x"] * 1000)}),
        (P.TEXT_MODEL, "token ids as FP32", {P.TOKEN_IDS: np.zeros((1, w), np.float32)}),
        (P.TEXT_MODEL, "token ids of the wrong width", {P.TOKEN_IDS: np.zeros((1, w + 3), np.int32)}),
        (P.TEXT_MODEL, "token id past the vocabulary", {P.TOKEN_IDS: np.full((1, w), 10**6, np.int32)}),
        (P.TEXT_MODEL, "negative token ids", {P.TOKEN_IDS: np.full((1, w), -5, np.int32)}),
        (P.VIDEO_MODEL, "frames of the wrong shape", {P.FRAMES: np.zeros((1, 2, 3, 8, 8), np.float32)}),
        (P.VIDEO_MODEL, "frames as INT32", {P.FRAMES: np.zeros((1, *frames.shape[1:]), np.int32)}),
        (P.VIDEO_MODEL, "NaN frames", {P.FRAMES: np.full((1, *frames.shape[1:]), np.nan, np.float32)}),
        (P.VIDEO_DECODE_MODEL, "random bytes as video", {P.VIDEO: texts(os.urandom(4096))}),
        (P.VIDEO_DECODE_MODEL, "empty video", {P.VIDEO: texts(b"")}),
        (P.VIDEO_DECODE_MODEL, "an mp4 header and nothing else", {P.VIDEO: texts(b"\0\0\0\x18ftypmp42" + b"\0" * 64)}),
        (P.SIMILARITY_MODEL, "prototypes of the wrong width",
         {P.PHRASE_PROTOTYPES: np.zeros((1, np_, d + 1), np.float32), P.SENTENCE_EMBEDDING: ok_sentence, **video}),
        (P.SIMILARITY_MODEL, "texts counted differently by the two text inputs",
         {P.PHRASE_PROTOTYPES: np.repeat(ok_phrases, 2, 0), P.SENTENCE_EMBEDDING: ok_sentence, **video}),
        (P.SIMILARITY_MODEL, "more texts than it takes",
         {P.PHRASE_PROTOTYPES: np.repeat(ok_phrases, 500, 0), P.SENTENCE_EMBEDDING: np.repeat(ok_sentence, 500, 0),
          **video}),
        (P.GALLERY_MODEL, "TOP_K 0", {P.PHRASE_PROTOTYPES: ok_phrases, P.SENTENCE_EMBEDDING: ok_sentence,
                                      P.TOP_K: np.zeros((1, 1), np.int32)}),
        (P.GALLERY_MODEL, "TOP_K 10^6", {P.PHRASE_PROTOTYPES: ok_phrases, P.SENTENCE_EMBEDDING: ok_sentence,
                                         P.TOP_K: np.full((1, 1), 10**6, np.int32)}),
        (P.GALLERY_MODEL, "TOP_K -1", {P.PHRASE_PROTOTYPES: ok_phrases, P.SENTENCE_EMBEDDING: ok_sentence,
                                       P.TOP_K: np.full((1, 1), -1, np.int32)}),
        (P.GALLERY_MODEL, "phrases of the wrong count",
         {P.PHRASE_PROTOTYPES: np.zeros((1, np_ + 2, d), np.float32), P.SENTENCE_EMBEDDING: ok_sentence}),
        (P.GALLERY_MODEL, "sentence of the wrong width",
         {P.PHRASE_PROTOTYPES: ok_phrases, P.SENTENCE_EMBEDDING: np.zeros((1, d - 1), np.float32)}),
        (P.TEXT_SEARCH_MODEL, "no TEXT", {P.TOP_K: np.ones((1, 1), np.int32)}),
        (P.TEXT_SEARCH_MODEL, "TOP_K as FP32", {P.TEXT: text, P.TOP_K: np.ones((1, 1), np.float32)}),
        (P.TEXT_SEARCH_MODEL, "TEXT as INT32", {P.TEXT: np.ones((1, 1), np.int32)}),
        (P.TEXT_SEARCH_MODEL, "invalid UTF-8", {P.TEXT: texts(b"\xc3\x28")}),
        (P.ENCODE_TEXT_MODEL, "empty text", {P.TEXT: texts(b"")}),
        (P.ENCODE_VIDEO_MODEL, "random bytes as video", {P.VIDEO: texts(os.urandom(1024))}),
        (P.SCORE_MODEL, "no VIDEO", {P.TEXT: text}),
        (P.SCORE_MODEL, "BETA as BYTES", {P.TEXT: text, P.VIDEO: texts(os.urandom(256)),
                                         P.BETA: np.array([b"1"], dtype=object)}),
        ("prost_nonexistent", "unknown model", {P.TEXT: text}),
    ]


def check_malformed(served: Served, specs: dict) -> list[dict]:
    """Each malformed request: the status and message it got, and whether every model was still ready after it."""
    rows = []
    client = grpcclient.InferenceServerClient(served.url)
    models = sorted({m["name"] for m in client.get_model_repository_index(
        headers=wire.key_headers(served.key), as_json=True)["models"] if m.get("state") == "READY"})
    for model, what, inputs in malformed_requests(specs):
        try:
            client.infer(model, [tensor(name, value) for name, value in inputs.items()], client_timeout=60)
            status, message = "OK", ""
        except InferenceServerException as exc:
            status, message = (exc.status() or "").rsplit(".", 1)[-1], (exc.message() or "")[:160]
        healthy = client.is_server_live() and all(client.is_model_ready(m) for m in models)
        rows.append({"model": model, "request": what, "status": status, "message": message, "healthy": healthy})
    client.close()
    return rows


def search_load(url: str, callers: int, seconds: float, tag: str, during=None, tail: float | None = None) -> dict:
    """Distinct searches from `callers` AsyncProstClient callers for `seconds`; `during(t0)` runs in a thread
    meanwhile (a fault, a publish), and with `tail` the load goes on until `tail` seconds after it returned; the
    load's figures plus what `during` returned."""
    finished: list[float] = []

    def side_work(started: float):
        try:
            return during(started)
        finally:
            finished.append(time.monotonic())

    def outlasted() -> bool:
        return tail is None or bool(finished) and time.monotonic() >= finished[0] + tail

    async def run() -> tuple:
        async with AsyncProstClient(url, timeout=30) as client:
            await client.wait_ready(60)
            started = time.monotonic()
            side = asyncio.to_thread(side_work, started) if during else asyncio.sleep(0)
            load, outcome = await asyncio.gather(
                closed_loop(lambda i: client.search(f"a red circle moves left {tag} {i}", top_k=5), callers, seconds,
                            until=outlasted), side)
            return load, outcome

    load, outcome = asyncio.run(run())
    return {**load.summary(), "during": outcome}


def recovery_seconds(url: str, since: float, timeout: float = 120.0) -> float:
    """Seconds from `since` until a fresh search without retries succeeds."""
    with ProstClient(url, timeout=5, retries=0) as probe:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                probe.search(f"probe {time.monotonic()}", top_k=1)
                return round(time.monotonic() - since, 2)
            except errors.ClientError:
                time.sleep(0.05)
    return float("nan")


def faults(served: Served, sizes: dict) -> list[dict]:
    """Each fault injected 2 s into a load: requests sent, failed as ProstClient saw them, recovery time."""
    rows = []

    def signal_stub(model: str, signum: int):
        def inject(t0: float) -> dict:
            time.sleep(max(0.0, t0 + 2 - time.monotonic()))
            for key, stub in live_stubs(served.server_pid()).items():
                if key[0] == model:
                    os.kill(stub.pid, signum)
            killed = time.monotonic()
            return {"recovery_s": recovery_seconds(served.url, killed)}
        return inject

    def kill_server(t0: float) -> dict:
        time.sleep(max(0.0, t0 + 2 - time.monotonic()))
        os.kill(served.server_pid(), signal.SIGKILL)
        killed = time.monotonic()
        return {"recovery_s": recovery_seconds(served.url, killed)}

    cases = [(f"{m} stub killed (SIGKILL)", signal_stub(m, signal.SIGKILL)) for m in PYTHON_MODELS]
    cases.append((f"{P.GALLERY_MODEL} stub stuck (SIGSTOP), --request-timeout {sizes['request_timeout']} s",
                  signal_stub(P.GALLERY_MODEL, signal.SIGSTOP)))
    cases.append(("tritonserver killed (SIGKILL), --restart-on-crash", kill_server))
    for i, (name, inject) in enumerate(cases):
        result = search_load(served.url, sizes["fault_callers"], sizes["fault_seconds"], f"fault{i}", inject)
        rows.append({"fault": name, **result})
    return rows


def rebuild_and_load(served: Served, export: Path) -> dict:
    """`prost repository build` from another export (new text and video encoders) into the served repository, then
    each changed model loaded through the repository API, encoders first: the swap a deployment makes."""
    started = time.monotonic()
    write_repository(export, served.repository)
    client = grpcclient.InferenceServerClient(served.url)
    for model in (P.VIDEO_MODEL, P.TEXT_MODEL, P.SIMILARITY_MODEL, P.GALLERY_MODEL):
        client.load_model(model, headers=wire.key_headers(served.key), client_timeout=300)
    client.close()
    return {"swap_s": round(time.monotonic() - started, 2)}


def access(repository: Path, work: Path) -> list[dict]:
    """TLS and the inference key on a second server: each way in refused without, served with."""
    cert, key = work / "cert.pem", work / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)], check=True,
                   capture_output=True, timeout=60)
    grpc, http, metrics = free_ports(3)
    rows = []
    with TritonServer(repository, grpc_port=grpc, http_port=http, metrics_port=metrics, log_dir=work / "tls-logs",
                      tls=TLS(cert, key, ca=cert), inference_key="secret", grace=10) as server:
        for what, options, expected in [
            ("plaintext", {"inference_key": "secret"}, "refused"),
            ("TLS without a client certificate", {"tls": wire.TLS(ca=cert), "inference_key": "secret"}, "refused"),
            ("mutual TLS without the inference key", {"tls": wire.TLS(ca=cert, cert=cert, key=key)}, "refused"),
            ("mutual TLS with the inference key", {"tls": wire.TLS(ca=cert, cert=cert, key=key),
                                                   "inference_key": "secret"}, "served"),
        ]:
            with ProstClient(server.url, timeout=5, retries=0, **options) as client:
                try:
                    client.search("a red circle", top_k=1)
                    got, detail = "served", ""
                except errors.ClientError as exc:
                    got, detail = "refused", f"{type(exc).__name__}: {str(exc)[:100]}"
            rows.append({"client": what, "expected": expected, "got": got, "detail": detail})
    return rows


def run(out: Path, smoke: bool) -> dict:
    sizes = SMOKE if smoke else FULL
    work = Path(tempfile.mkdtemp(prefix="prost-reliability-"))
    model = prost.create_model("tiny", seed=0)
    export = export_onnx(model, work / "export", parity=False)
    repository = write_repository(export, work / "repo")
    served = Served(repository, work, sizes["request_timeout"])
    report: dict = {"sizes": sizes}
    try:
        report["publish_initial_s"] = publish_random_gallery(served, sizes["videos"], seed=1)
        report["malformed"] = check_malformed(served, graph_specs(model.config))
        # RSS growth is measured from after a warm-up at the same concurrency: the first burst fills allocator and
        # ONNX Runtime arenas once (cold RSS is reported too); what the load adds after that would be a leak.
        rss_cold = served.rss_mib()
        search_load(served.url, sizes["load_callers"], sizes["warmup_seconds"], "warmup")
        rss_before = served.rss_mib()
        report["load"] = {**search_load(served.url, sizes["load_callers"], sizes["load_seconds"], "load"),
                          "rss_cold_mib": rss_cold, "rss_before_mib": rss_before, "rss_after_mib": served.rss_mib()}
        report["faults"] = faults(served, sizes)
        report["publish_under_load"] = search_load(
            served.url, sizes["fault_callers"], sizes["fault_seconds"], "publish",
            lambda t0: {"publish_s": publish_random_gallery(served, sizes["videos"], seed=2)})
        report["two_stage_swap_under_load"] = search_load(  # outlasts the build and the swap, however long
            served.url, sizes["fault_callers"], sizes["fault_seconds"], "two-stage",
            lambda t0: two_stage_swap(served, export, work, sizes["videos"]), tail=sizes["fault_seconds"] / 2)
        other = export_onnx(prost.create_model("tiny", seed=1), work / "export-retrained", parity=False)
        report["rebuild_under_load"] = search_load(served.url, sizes["fault_callers"], sizes["fault_seconds"],
                                                   "rebuild", lambda t0: rebuild_and_load(served, other))
    finally:
        report["serve_exit"] = served.stop()
        report["serve_log_tail"] = served.log.read_text()[-1500:]
    report["access"] = access(repository, work)
    report["verdict"] = verdict(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    return report


def verdict(report: dict) -> dict:
    load = report["load"]
    return {
        "malformed_kinds": len(report["malformed"]),
        "unhealthy_after_malformed": sum(not row["healthy"] for row in report["malformed"]),
        "failed_calls_under_faults": sum(row["failed"] for row in report["faults"])
        + report["publish_under_load"]["failed"] + report["two_stage_swap_under_load"]["failed"]
        + report["rebuild_under_load"]["failed"],
        "failed_calls_under_load": load["failed"],
        "rss_growth_pct": round(100 * (load["rss_after_mib"] / load["rss_before_mib"] - 1), 1),
        "access_as_expected": all(row["got"] == row["expected"] for row in report["access"]),
    }


def markdown(report: dict) -> str:
    v, load, sizes = report["verdict"], report["load"], report["sizes"]
    lines = ["# Reliability report", "", "`bench/reliability.py` against `prost serve --restart-on-crash` (tiny model, "
             f"random weights, {sizes['videos']} random videos, 2-core machine).", "",
             "| check | result |", "|---|---|",
             f"| malformed requests | {v['malformed_kinds']} kinds, {v['unhealthy_after_malformed']} left the server "
             f"unhealthy |",
             f"| load: {sizes['load_callers']} callers, {sizes['load_seconds']} s | {load['ok']} ok, {load['failed']} "
             f"failed, {load['throughput_qps']} queries/s, p50 {load['p50_ms']} ms, p99 {load['p99_ms']} ms, RSS "
             f"{load['rss_before_mib']} -> {load['rss_after_mib']} MiB ({v['rss_growth_pct']:+.1f}%; cold "
             f"{load['rss_cold_mib']} MiB before a {sizes['warmup_seconds']} s warm-up) |"]
    for row in report["faults"]:
        lines.append(f"| {row['fault']} under {sizes['fault_callers']} callers | {row['sent']} sent, {row['failed']} "
                     f"failed, recovered in {row['during']['recovery_s']} s |")
    pub = report["publish_under_load"]
    lines.append(f"| gallery publish under load | {pub['sent']} sent, {pub['failed']} failed, published in "
                 f"{pub['during']['publish_s']} s |")
    swap = report["two_stage_swap_under_load"]
    lines.append(f"| two-stage gallery built and swapped in under load | {swap['sent']} sent, {swap['failed']} "
                 f"failed, built in {swap['during']['build_s']} s, swapped in {swap['during']['swap_s']} s |")
    rebuild = report["rebuild_under_load"]
    lines.append(f"| repository rebuild with new encoders, loaded under load | {rebuild['sent']} sent, "
                 f"{rebuild['failed']} failed, swapped in {rebuild['during']['swap_s']} s |")
    lines.append(f"| TLS and keys | {'as expected' if v['access_as_expected'] else 'NOT as expected'}: "
                 + "; ".join(f"{r['client']}: {r['got']}" for r in report["access"]) + " |")
    lines += ["", "## Malformed requests", "", "| model | request | status | healthy after |", "|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['request']} | {r['status']} | {r['healthy']} |" for r in report["malformed"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("reliability"), help="folder for report.md and report.json")
    parser.add_argument("--smoke", action="store_true", help="seconds per case instead of minutes (the test suite's)")
    args = parser.parse_args()
    report = run(args.out, args.smoke)
    print(json.dumps(report["verdict"], indent=2))
    print((args.out / "report.md").read_text())


if __name__ == "__main__":
    main()
