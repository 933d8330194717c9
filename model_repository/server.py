"""`prost serve` and TritonServer: run tritonserver on a repository, wait for every model, stop cleanly.

The binary is `tritonserver` from PATH when present, else the one in the nvidia-pytriton wheel (Triton 2.51, python
backend only). For the wheel a backend directory is assembled under the log directory: links to the wheel's
`backends/python/*` plus the python stub for this interpreter's version. The stub imports numpy, onnxruntime and prost
from the environment the server starts in, so this interpreter's bin/ goes first on PATH.

Process lifetime: tritonserver runs in its own session (process group), which its python-backend stubs share. It gets
PR_SET_PDEATHSIG=SIGKILL from a tiny exec wrapper (no `preexec_fn`, which is unsafe in a threaded parent). Linux sends
that signal when the *thread* that started the server exits, so start it from a thread that outlives it (the main
thread, normally). `stop()` sends SIGINT, waits `grace` seconds (Triton's own --exit-timeout-secs is 5 s shorter, so
it finishes first), SIGKILLs the group if needed and always SIGKILLs whatever is left of the group afterwards (stubs).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib.util
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prost.errors import RepositoryError
from prost_client.protocol import INFERENCE_KEY_HEADER, REPOSITORY_KEY_HEADER
from prost_model_repository import plans, storage
from prost_model_repository.busy import BUSY_DIR_ENV
from prost_model_repository.watchdog import StubWatchdog

log = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 64 << 20
DEFAULT_REQUEST_TIMEOUT = 120.0  # prost serve --request-timeout, seconds
MAX_RESTARTS, RESTART_WINDOW = 5, 600.0  # --restart-on-crash gives up after this many restarts in this many seconds
_FAILED_LOAD = re.compile(r"failed to load '([^']+)' version (\d+): (.*)")
# argv: parent pid, then the tritonserver command line. PR_SET_PDEATHSIG (1) survives execv of a non-setuid binary.
_PDEATHSIG_EXEC = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)  # the parent died before prctl: do not start an orphan\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


@dataclass(frozen=True)
class TLS:
    """gRPC over TLS: the server's certificate chain and private key (PEM files); with `ca`, mutual TLS: clients
    must present a certificate that `ca` signed."""

    cert: Path
    key: Path
    ca: Path | None = None

    def __post_init__(self) -> None:
        for name in ("cert", "key", "ca"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise RepositoryError(f"--tls-{name} {path} is not a file")

    def args(self) -> list[str]:
        args = ["--grpc-use-ssl=true", f"--grpc-server-cert={self.cert}", f"--grpc-server-key={self.key}"]
        if self.ca is not None:
            args += [f"--grpc-root-cert={self.ca}", "--grpc-use-ssl-mutual=true"]
        return args


class StopRequested(Exception):
    """A stop was requested (SIGINT/SIGTERM through `signals_stop`) before the server was ready."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (the OS picks it)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct free ports, held open together while they are picked so none repeats."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def find_tritonserver() -> tuple[Path, Path | None]:
    """(binary, wheel root or None): tritonserver from PATH, else the nvidia-pytriton wheel's."""
    on_path = shutil.which("tritonserver")
    if on_path:
        return Path(on_path), None
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RepositoryError("no tritonserver on PATH and nvidia-pytriton is not installed; "
                              "install the project (`make setup`) or use the NGC tritonserver image")
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    binary = root / "bin" / "tritonserver"
    if not binary.is_file():
        raise RepositoryError(f"{binary} is missing from the nvidia-pytriton wheel")
    return binary, root


def python_backend_dir(wheel_root: Path, target: Path) -> Path:
    """A backend directory whose python backend runs the stub built for this interpreter's Python version."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = wheel_root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise RepositoryError(f"the nvidia-pytriton wheel has no python backend stub for Python {version} ({stub})")
    python = target / "python"
    python.mkdir(parents=True, exist_ok=True)
    links = {p.name: p for p in (wheel_root / "backends" / "python").iterdir() if p.is_file()}
    links[stub.name] = stub
    for name, source in links.items():
        link = python / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(source)
    return target


def port_problem(host: str, port: int) -> str | None:
    """Why a TCP server could not listen on host:port now ("in use", or the system's reason), or None."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        return f"cannot resolve --host {host} ({exc.strerror})"
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Triton's listeners do
        try:
            s.bind(address)
        except OSError as exc:
            return "in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
    return None


def check_repository(path: Path) -> None:
    """Refuse a folder that is not a repository written by `prost repository build`, naming what it is instead."""
    if not path.is_dir():
        raise RepositoryError(f"model repository {path} does not exist; build one with `prost repository build "
                              f"--export EXPORT --out {path}`")
    manifest = storage.read_manifest(path)
    if manifest.get("format") == storage.REPOSITORY_FORMAT and manifest.get("models"):
        return
    if str(manifest.get("format", "")).startswith("prost-serve-export"):
        raise RepositoryError(f"{path} is an export directory, not a model repository; build one from it with "
                              f"`prost repository build --export {path} --out REPOSITORY`")
    raise RepositoryError(f"{path} is not a model repository built by `prost repository build` (no "
                          f"{storage.MANIFEST_FILE} listing its models); build one with `prost repository build "
                          f"--export EXPORT --out {path}`")


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # nothing left, or the id was reused
        os.killpg(pgid, signal.SIGKILL)


class TritonServer:
    """A tritonserver process on one repository; a context manager that waits for readiness and stops on exit."""

    def __init__(self, repository: str | Path, *, grpc_port: int = 8001, http_port: int = 8000,
                 metrics_port: int = 8002, host: str = "127.0.0.1", log_dir: str | Path | None = None,
                 models: list[str] | None = None, repository_key: str | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, ready_timeout: float = 180.0, grace: float = 30.0,
                 tls: TLS | None = None, inference_key: str | None = None, request_timeout: float = 0.0,
                 extra_args: list[str] | None = None) -> None:
        """
        Args:
            repository: the model repository (from `prost repository build`).
            host: address of all three endpoints; 127.0.0.1 unless the server must be reachable from elsewhere.
            log_dir: where `tritonserver.log` and the backend directory go (default: a new temp directory).
            models: models loaded at start (default: all, `--load-model=*`).
            repository_key: key of the restricted model-repository endpoints (default: generated).
            cache_bytes: size of the local response cache.
            ready_timeout: seconds to wait for every model to be ready.
            grace: seconds between SIGINT and SIGKILL when stopping (Triton's exit timeout is grace - 5, min 1).
            tls: serve gRPC over TLS. HTTP, which Triton serves without TLS, then listens on 127.0.0.1 only.
            inference_key: restrict the inference and health protocols (gRPC and HTTP) to callers sending it.
            request_timeout: in `serve_forever`, the seconds a python-backend stub may spend in one request (or
                stopped) before the watchdog kills it and reloads its model (0: no limit).
        """
        self.repository = Path(repository).resolve()
        check_repository(self.repository)
        self.host, self.grpc_port, self.http_port, self.metrics_port = host, grpc_port, http_port, metrics_port
        self.tls, self.inference_key = tls, inference_key or None
        self.http_host = "127.0.0.1" if tls is not None else host  # no plaintext next to TLS beyond this machine
        for name, port, flag, address in (("gRPC", grpc_port, "--grpc-port", host),
                                          ("HTTP", http_port, "--http-port", self.http_host),
                                          ("metrics", metrics_port, "--metrics-port", host)):
            problem = port_problem(address, port)
            if problem == "in use":
                raise RepositoryError(f"port {port} is in use ({name}); pick another with {flag}")
            if problem:
                raise RepositoryError(f"cannot listen on {host}:{port} ({name}): {problem}")
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="prost-triton-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / "tritonserver.log"
        self.models = models
        self.repository_key = repository_key or secrets.token_urlsafe(24)
        self.cache_bytes, self.ready_timeout, self.grace = cache_bytes, ready_timeout, grace
        self.extra_args = list(extra_args or [])
        self.request_timeout = request_timeout
        self.busy_dir = self.log_dir / "busy"  # the stubs' busy marks (prost_model_repository.busy)
        self.process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self.stop_signal: int | None = None  # set by request_stop (a signal handler)

    @property
    def url(self) -> str:
        """gRPC host:port for ProstClient."""
        return f"{self._connect_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{'127.0.0.1' if self.tls else self._connect_host}:{self.http_port}"

    @property
    def _connect_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    def command(self) -> tuple[list[str], dict[str, str]]:
        """The tritonserver command line and environment.

        The key of the restricted endpoints is on the command line (visible in /proc/<pid>/cmdline to local users):
        tritonserver 2.51 reads these options from argv only, with no file or environment alternative. Keep the
        default 127.0.0.1 binding, or a host where local users are trusted.
        """
        binary, wheel_root = find_tritonserver()
        key = f"{REPOSITORY_KEY_HEADER}={self.repository_key}"
        args = [str(binary), f"--model-repository={self.repository}", "--model-control-mode=explicit",
                f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
                f"--http-address={self.http_host}", f"--http-port={self.http_port}",
                f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
                f"--cache-config=local,size={self.cache_bytes}",
                f"--grpc-restricted-protocol=model-repository:{key}",
                f"--http-restricted-api=model-repository:{key}",
                f"--exit-timeout-secs={max(1, int(self.grace) - 5)}"]
        if self.inference_key:
            inference = f"inference,health:{INFERENCE_KEY_HEADER}={self.inference_key}"
            args += [f"--grpc-restricted-protocol={inference}", f"--http-restricted-api={inference}"]
        if self.tls is not None:
            args += self.tls.args()
        args += [f"--load-model={m}" for m in (self.models or ["*"])]
        if wheel_root is not None:
            args += [f"--backend-directory={python_backend_dir(wheel_root, self.log_dir / 'backends')}",
                     f"--cache-directory={wheel_root / 'caches'}"]
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.pop(BUSY_DIR_ENV, None)
        if self.request_timeout > 0:
            env[BUSY_DIR_ENV] = str(self.busy_dir)
        return args + self.extra_args, env

    def start(self) -> TritonServer:
        """Start tritonserver and wait until every model is ready; RepositoryError says which model failed and why."""
        if self.process is not None:
            raise RepositoryError("this TritonServer is already started")
        if self.stop_signal is not None:
            raise StopRequested(f"signal {self.stop_signal} before tritonserver started")
        args, env = self.command()
        shutil.rmtree(self.busy_dir, ignore_errors=True)  # marks of a previous run's stubs
        self.busy_dir.mkdir()
        started = time.monotonic()
        wrapper = [sys.executable, "-I", "-S", "-c", _PDEATHSIG_EXEC, str(os.getpid())]
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(wrapper + args, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        log.info("tritonserver pid %d on %s (gRPC), logs: %s", self.process.pid, self.url, self.log_path)
        try:
            self.wait_ready(self.ready_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.stop_signal is not None:
                raise StopRequested(f"signal {self.stop_signal} while tritonserver was starting")
            if self.process.poll() is not None:
                raise RepositoryError(f"tritonserver exited with status {self.process.returncode}: "
                                      f"{self.failure_summary()} (log: {self.log_path})")
            states = self._model_states()
            if states is not None and self._http_ok("/v2/health/ready"):
                waiting = {m: s for m, s in states.items() if s[0] != "READY"}
                if not waiting:
                    return
            if time.monotonic() > deadline:
                raise RepositoryError(f"models not ready after {timeout:.0f} s: {self.failure_summary(states)} "
                                      f"(log: {self.log_path})")
            time.sleep(0.25)

    def _repository_call(self, path: str, timeout: float = 2.0) -> object:
        """POST to a restricted repository endpoint (`/v2/repository/...`); its JSON answer, None when empty."""
        request = urllib.request.Request(f"{self.http_url}/v2/repository/{path}", data=b"{}", method="POST",
                                         headers={REPOSITORY_KEY_HEADER: self.repository_key})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def ready_versions(self) -> set[tuple[str, str]] | None:
        """{(model, version)} READY in the repository index; None while the server does not answer."""
        try:
            index = self._repository_call("index")
        except (OSError, urllib.error.URLError, ValueError):
            return None
        return {(entry["name"], entry.get("version", "")) for entry in index if entry.get("state") == "READY"}

    def load_model(self, model: str, timeout: float = 300.0) -> None:
        """(Re)load a model from the repository through Triton's load API."""
        self._repository_call(f"models/{model}/load", timeout=timeout)

    def _model_states(self) -> dict[str, tuple[str, str]] | None:
        """{model: (state, reason)} of the models to load, from the repository index; None while unreachable."""
        try:
            index = self._repository_call("index")
        except (OSError, urllib.error.URLError, ValueError):
            return None
        states: dict[str, tuple[str, str]] = {}
        for entry in index:
            if self.models is None or entry["name"] in self.models:
                state = entry.get("state", "UNKNOWN") or "UNKNOWN"
                if state == "READY" or entry["name"] not in states:
                    states[entry["name"]] = (state, entry.get("reason", ""))
        return states

    def _http_ok(self, path: str) -> bool:
        headers = {INFERENCE_KEY_HEADER: self.inference_key} if self.inference_key else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(f"{self.http_url}{path}", headers=headers),
                                        timeout=2) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def failure_summary(self, states: dict[str, tuple[str, str]] | None = None) -> str:
        """Which models failed and why, from the repository index or the server log."""
        failed = {m: f"{s}: {r}" if r else s for m, (s, r) in (states or {}).items() if s != "READY"}
        for line in self.log_text().splitlines():
            match = _FAILED_LOAD.search(line)
            if match:
                reason = match[3].rstrip('"').split("\\n\\nAt:")[0].replace("\\n", " ")  # drop the traceback
                failed[match[1]] = f"version {match[2]}: {reason}"
        if failed:
            return "; ".join(f"{model}: {reason}" for model, reason in sorted(failed.items()))
        tail = [line for line in self.log_text().splitlines() if line.strip()][-5:]
        return " | ".join(tail) or "no output"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> int | None:
        """SIGINT, SIGKILL to the process group after the grace period, then SIGKILL to anything left in the group
        (python-backend stubs); returns the exit status (None when not running). Safe to call repeatedly."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            try:
                process.wait(self.grace)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver did not stop within %.0f s; killing it", self.grace)
                _kill_group(process.pid)
                process.wait()
        _kill_group(process.pid)  # its own session: start_new_session made the server's pid the group id
        return process.returncode

    def request_stop(self, signum: int = signal.SIGTERM, _frame=None) -> None:
        """Ask `start`/`serve_forever` to stop the server; only records the signal, so it is a safe signal handler."""
        self.stop_signal = signum

    @contextlib.contextmanager
    def signals_stop(self):
        """SIGINT and SIGTERM call `request_stop` inside the block (main thread only); install it before `start`."""
        previous = {s: signal.signal(s, self.request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def serve_forever(self, watchdog_interval: float = 2.0, restart_on_crash: bool = False) -> int:
        """Block until the server exits or a stop is requested, then stop it; returns its exit status.

        Every `watchdog_interval` seconds (0: never) a python model whose backend stub died is reloaded
        (prost_model_repository.watchdog). With `restart_on_crash`, a server that exits on its own (killed, crashed)
        is started again, at most MAX_RESTARTS times in RESTART_WINDOW seconds, each restart logged.
        """
        restarts: list[float] = []
        while True:
            status = self._serve_once(watchdog_interval)
            if self.stop_signal is not None or not restart_on_crash:
                return status
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < RESTART_WINDOW] + [now]
            if len(restarts) > MAX_RESTARTS:
                log.error("tritonserver exited with status %s, the %d-th time in %.0f s; not restarting it again",
                          status, len(restarts), RESTART_WINDOW)
                return status
            log.warning("tritonserver exited with status %s; restarting it (%d of at most %d in %.0f s)", status,
                        len(restarts), MAX_RESTARTS, RESTART_WINDOW)
            self.process = None
            try:
                self.start()
            except StopRequested:
                return status
            log.warning("tritonserver restarted in %.1f s", self.startup_seconds)

    def _serve_once(self, watchdog_interval: float) -> int:
        """serve_forever for the running process: until it exits or a stop is requested; then stop it."""
        process, done = self.process, threading.Event()
        if watchdog_interval > 0:  # a thread: a reload (up to minutes) never delays a stop
            threading.Thread(target=self._watch_stubs, args=(process.pid, watchdog_interval, done),
                             name="stub-watchdog", daemon=True).start()
        try:
            while process.poll() is None and self.stop_signal is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(0.5)
        finally:
            done.set()
            self.stop()
        return process.returncode

    def _watch_stubs(self, server_pid: int, interval: float, done: threading.Event) -> None:
        """serve_forever's watchdog thread: a check every `interval` seconds until `done`."""
        watchdog = StubWatchdog(server_pid, self.repository, self.ready_versions, self.load_model,
                                busy_dir=self.busy_dir, request_timeout=self.request_timeout)
        while not done.wait(interval):
            try:
                watchdog.check()
            except Exception:  # noqa: BLE001 - logged; the watchdog never stops serving
                if not done.is_set():
                    log.exception("stub watchdog")

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def register_cli(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("serve", help="run Triton on a model repository")
    parser.add_argument("--repository", required=True, type=Path,
                        help="model repository written by `prost repository build`")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC endpoint (clients: --url HOST:PORT)")
    parser.add_argument("--http-port", type=int, default=8000, help="HTTP endpoint (health, repository control)")
    parser.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics endpoint")
    parser.add_argument("--host", default="127.0.0.1", help="address of all endpoints (default 127.0.0.1)")
    parser.add_argument("--log-dir", type=Path, help="server log and backend directory (default: a temp dir)")
    parser.add_argument("--repository-key", default=os.environ.get("PROST_REPOSITORY_KEY"),
                        help="key for model load/unload (default: $PROST_REPOSITORY_KEY, else generated)")
    parser.add_argument("--tls-cert", type=Path, help="serve gRPC over TLS with this PEM certificate chain (HTTP then "
                        "listens on 127.0.0.1 only: Triton serves it without TLS)")
    parser.add_argument("--tls-key", type=Path, help="the PEM private key of --tls-cert")
    parser.add_argument("--tls-ca", type=Path, help="mutual TLS: clients must present a certificate this PEM CA signed")
    parser.add_argument("--inference-key", default=os.environ.get("PROST_INFERENCE_KEY"),
                        help="restrict inference and health to callers sending this key (default: "
                             "$PROST_INFERENCE_KEY, else open); clients pass --inference-key")
    parser.add_argument("--ready-timeout", type=float, default=300.0,
                        help="seconds to wait for every model to load before giving up")
    parser.add_argument("--grace", type=float, default=30.0, help="seconds from SIGINT to SIGKILL when stopping")
    parser.add_argument("--restart-on-crash", action="store_true",
                        help=f"start tritonserver again when it exits on its own (killed, crashed): at most "
                             f"{MAX_RESTARTS} times in {RESTART_WINDOW:.0f} s, each logged")
    parser.add_argument("--stub-watchdog", type=float, default=2.0, metavar="SECONDS",
                        help="how often to look for dead python-backend stubs and reload their models (0: never; "
                             "default 2)")
    parser.add_argument("--request-timeout", type=float, metavar="SECONDS",
                        help=f"a python-backend stub in one call to its model (a dynamic batch) or stopped this long "
                             f"is killed and its model reloaded; clients retry its requests (0: no limit; default "
                             f"{DEFAULT_REQUEST_TIMEOUT:.0f} with the stub watchdog, else none)")
    parser.add_argument("--plan-cache", type=Path, default=Path.home() / ".cache" / "prost" / "plans",
                        help="build on target: where TensorRT plans built at start are kept (default ~/.cache/prost/"
                             "plans; repositories built with --build-on-target)")
    parser.set_defaults(func=_serve_cmd)


def _tls(args: argparse.Namespace) -> TLS | None:
    if args.tls_cert is None and args.tls_key is None and args.tls_ca is None:
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise RepositoryError("TLS needs both --tls-cert and --tls-key (and --tls-ca for mutual TLS)")
    return TLS(args.tls_cert, args.tls_key, args.tls_ca)


def _serve_cmd(args: argparse.Namespace) -> int:
    timeout = args.request_timeout
    if timeout is None:
        timeout = DEFAULT_REQUEST_TIMEOUT if args.stub_watchdog > 0 else 0.0
    elif timeout < 0 or timeout > 0 and args.stub_watchdog <= 0:
        raise RepositoryError(f"--request-timeout {timeout:g} needs a value >= 0 and the stub watchdog "
                              f"(--stub-watchdog > 0) to enforce it; pass --request-timeout 0 for no limit")
    plans.prepare(args.repository, args.plan_cache)  # build on target; a no-op for other repositories
    server = TritonServer(args.repository, grpc_port=args.grpc_port, http_port=args.http_port,
                          metrics_port=args.metrics_port, host=args.host, log_dir=args.log_dir,
                          repository_key=args.repository_key, ready_timeout=args.ready_timeout, grace=args.grace,
                          tls=_tls(args), inference_key=args.inference_key, request_timeout=timeout)
    # prost-client index --repository reads the key there; a read-only repository keeps it beside the logs. Written
    # before the start, so a client that sees the server ready finds it.
    key_file = storage.write_key(server.repository, server.repository_key) or storage.write_key(
        server.log_dir, server.repository_key)
    try:
        with server.signals_stop():  # before start: a signal during startup stops Triton gracefully too
            print(f"starting tritonserver on {args.repository}; logs: {server.log_path}", file=sys.stderr, flush=True)
            try:
                server.start()
            except StopRequested:
                print(f"stopped during startup; logs: {server.log_path}", file=sys.stderr)
                return 0
            where = key_file or "not written (neither the repository nor the log folder is writable)"
            print(f"ready in {server.startup_seconds:.1f} s: gRPC {server.url}, HTTP {server.http_url}, metrics "
                  f"{server._connect_host}:{server.metrics_port}\nrepository key (for load/unload, e.g. prost-client "
                  f"index): {where}\nlogs: {server.log_path}", file=sys.stderr, flush=True)
            status = server.serve_forever(watchdog_interval=args.stub_watchdog,
                                          restart_on_crash=args.restart_on_crash)
    finally:
        if key_file and storage.read_key(key_file.parent) == server.repository_key:
            key_file.unlink(missing_ok=True)  # another server may have written its own key since
    print(f"tritonserver exited with status {status}; logs: {server.log_path}", file=sys.stderr)
    return 0 if status in (0, -signal.SIGINT, -signal.SIGTERM) else 1
