"""`prost-client`: search, index and score against a running ProST Triton server."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from prost_client import gallery_format as F, protocol as P
from prost_client.client import ProstClient
from prost_client.errors import ClientError
from prost_client.wire import TLS, VideoSource

EXIT_SKIPPED = 3  # `index` published, but left videos out: scripts can tell it from success (0) and failure (1)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")


def _common_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """--url, --timeout, --repository-key: accepted before and after the subcommand (the subcommand's copies leave
    the values alone unless given)."""
    def default(value):
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("--url", default=default(os.environ.get("PROST_URL", "127.0.0.1:8001")),
                        help="Triton gRPC endpoint as host:port, no scheme (default: $PROST_URL, else 127.0.0.1:8001)")
    parser.add_argument("--timeout", type=float, default=default(30.0), help="deadline per call, seconds (default: 30)")
    parser.add_argument("--repository-key", default=default(os.environ.get("PROST_REPOSITORY_KEY")),
                        help="key of the server's model-repository endpoints, needed to publish (default: "
                             "$PROST_REPOSITORY_KEY, else the key file `prost serve` wrote into --repository)")
    parser.add_argument("--inference-key", default=default(os.environ.get("PROST_INFERENCE_KEY")),
                        help="the server's inference key, when `prost serve --inference-key` set one (default: "
                             "$PROST_INFERENCE_KEY)")
    parser.add_argument("--tls-ca", type=Path, default=default(None),
                        help="connect over TLS, verifying the server with this PEM CA (default: plaintext)")
    parser.add_argument("--tls-cert", type=Path, default=default(None),
                        help="mutual TLS: this client's PEM certificate (with --tls-key; default: none)")
    parser.add_argument("--tls-key", type=Path, default=default(None), help="mutual TLS: the key of --tls-cert "
                        "(default: none)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prost-client", description="Query a ProST Triton deployment over gRPC: "
                                     "search a gallery by text, index videos into it, score texts against videos.")
    _common_options(parser, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _common_options(common, defaults=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    search = sub.add_parser("search", parents=[common], help="top-k gallery videos for each text",
                            description="The top-k gallery videos for each text, best first: rank, score "
                                        "S = S_es + beta * S_op, video id, and per phrase prototype the frame of "
                                        "its best-matching object prototype (0-based).")
    search.add_argument("texts", nargs="+", metavar="TEXT", help="one or more queries (quote each)")
    search.add_argument("--top-k", type=int, default=P.DEFAULT_TOP_K,
                        help=f"results per text (default: {P.DEFAULT_TOP_K})")
    search.add_argument("--json", action="store_true", help="print JSON instead of a table")
    search.set_defaults(func=_search)

    index = sub.add_parser("index", parents=[common],
                           help="encode the videos of a directory and publish them as a new gallery version",
                           description="Encode the videos of a directory and publish them as a new prost_gallery "
                                       "version. With --repository the version is written into the served "
                                       "repository (durable) by the server's gallery writer: two-stage at scale, "
                                       "and --incremental adds videos to the latest version and --remove hides "
                                       "some, without re-encoding the rest. Without it the files are uploaded "
                                       "through Triton's load API as a whole new exact gallery, kept in a temporary "
                                       "directory: after a server restart the repository's latest gallery serves "
                                       "again.")
    index.add_argument("directory", type=Path, metavar="DIRECTORY", nargs="?",
                       help=f"folder searched recursively for {', '.join(VIDEO_SUFFIXES)} files; a video's id is "
                            f"its path below it, without the suffix (optional with --remove)")
    index.add_argument("--repository", type=Path,
                       help="the served repository on this machine (as given to `prost serve --repository`): the "
                            "version is written there (durable), and its key file is read")
    index.add_argument("--similarity-onnx", type=Path,
                       help="needed to upload the gallery without --repository: prost_gallery/<N>/similarity.onnx "
                            "of the built repository (the export's similarity.onnx works, several times slower); an "
                            "upload is NOT durable: lost when the server restarts")
    index.add_argument("--incremental", action="store_true",
                       help="with --repository: add the videos to the latest version (an id it holds is replaced) "
                            "instead of replacing the gallery")
    index.add_argument("--remove", type=Path, metavar="FILE",
                       help="with --incremental: a text file of video ids to remove, one a line")
    index.add_argument("--batch-size", type=int, default=4, help="videos per encode request (default: 4)")
    index.add_argument("--keep-versions", type=int, default=3,
                       help="with --repository: gallery versions kept on disk, the new one included (default: 3)")
    index.add_argument("--strict", action="store_true",
                       help="stop at the first video the client cannot read or the server refuses (undecodable, over "
                            "its size or frame limits); default: leave it out, list it, and exit with status 3")
    index.add_argument("--no-progress", action="store_true", help="no progress bar")
    index.set_defaults(func=_index)

    wait = sub.add_parser("wait", parents=[common], help="wait until the server is up and every model is ready",
                          description="Wait until the server at --url is up and every model a client uses is ready "
                                      "(e.g. right after `prost serve ... &`); exits 1 if it is not in time.")
    wait.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait (default: 300)")
    wait.set_defaults(func=_wait)

    reload = sub.add_parser("reload", parents=[common], help="serve the newest gallery version in the repository",
                            description="Load prost_gallery again, so the server serves the newest version in its "
                                        "repository (e.g. after `prost gallery build --repository`).")
    reload.set_defaults(func=_reload)

    score = sub.add_parser("score", parents=[common], help="S = S_es + beta * S_op of texts against video files",
                           description="Score every text against every video file: S = S_es + beta * S_op, one "
                                       "line per pair.")
    score.add_argument("--text", action="append", required=True, help="a text; repeat for several")
    score.add_argument("--video", action="append", required=True, type=Path, help="a video file; repeat for several")
    score.add_argument("--beta", type=float, help="weight of S_op (default: the exported model's beta)")
    score.add_argument("--json", action="store_true", help="print JSON instead of lines")
    score.set_defaults(func=_score)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        tls = TLS(args.tls_ca, args.tls_cert, args.tls_key) if args.tls_ca or args.tls_cert else None
        with ProstClient(args.url, timeout=args.timeout, repository_key=args.repository_key,
                         inference_key=args.inference_key, tls=tls) as client:
            return int(args.func(client, args) or 0)
    except ClientError as exc:
        print(f"prost-client {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _wait(client: ProstClient, args: argparse.Namespace) -> int:
    client.wait_ready(timeout=args.ready_timeout)
    print(f"ready: {args.url}")
    return 0


def _reload(client: ProstClient, args: argparse.Namespace) -> int:
    print(f"serving {P.GALLERY_MODEL} version {client.reload_gallery()}")
    return 0


def _search(client: ProstClient, args: argparse.Namespace) -> int:
    results = client.search(args.texts, top_k=args.top_k)
    if args.json:
        payload = [{"text": text, "results": [{"video_id": h.video_id, "score": h.score,
                                                "matched_frames": list(h.matched_frames)} for h in hits]}
                   for text, hits in zip(args.texts, results)]
        print(json.dumps(payload, indent=2))
        return 0
    for text, hits in zip(args.texts, results):
        print(f"{text!r}: {len(hits)} result(s)")
        if hits:
            print(f"  {'rank':>4}  {'score':>8}  video  [best frame of each phrase prototype]")
        for rank, hit in enumerate(hits, 1):
            print(f"  {rank:4d}  {hit.score:8.4f}  {hit.video_id}  {list(hit.matched_frames)}")
    return 0


def _index(client: ProstClient, args: argparse.Namespace) -> int:
    try:
        remove = sorted(set(F.read_id_list(args.remove))) if args.remove else []
    except ValueError as exc:
        raise ClientError(str(exc)) from None
    if args.remove and not remove:
        raise ClientError(f"{args.remove} lists no video id (one a line)")
    if args.directory is None and not remove:
        raise ClientError("index needs a DIRECTORY of videos (or, with --incremental, --remove FILE alone)")
    videos: list[Path] = []
    if args.directory is not None:
        if not args.directory.is_dir():
            raise ClientError(f"{args.directory} is not a directory")
        videos = sorted(p for p in args.directory.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        if not videos:
            raise ClientError(f"no video files ({', '.join(VIDEO_SUFFIXES)}) under {args.directory}")
    ids = [p.relative_to(args.directory).with_suffix("").as_posix() for p in videos]
    skipped: list[tuple[VideoSource, str]] = []
    try:
        version = client.publish_gallery(videos, ids, repository=args.repository,
                                         similarity_onnx=args.similarity_onnx, batch_size=args.batch_size,
                                         progress=not args.no_progress, keep_versions=args.keep_versions,
                                         on_invalid=None if args.strict else lambda v, why: skipped.append((v, why)),
                                         incremental=args.incremental, remove=remove)
    finally:
        for video, reason in skipped:
            print(f"skipped {video}: {reason}", file=sys.stderr)
    left_out = f"; left out {len(skipped)} unreadable or refused (listed above)" if skipped else ""
    what = "added" if args.incremental else "with"
    removed = f", removed {len(remove)}" if remove else ""
    print(f"published {P.GALLERY_MODEL} version {version} {what} {len(videos) - len(skipped)} video(s){removed}"
          f"{left_out}")
    return EXIT_SKIPPED if skipped else 0


def _score(client: ProstClient, args: argparse.Namespace) -> int:
    scores = client.score(args.text, args.video, beta=args.beta)
    if args.json:
        print(json.dumps({"texts": args.text, "videos": [str(v) for v in args.video], "scores": scores.tolist()}))
        return 0
    for text, row in zip(args.text, scores):
        for video, value in zip(args.video, row):
            print(f"{value:8.4f}  {text!r}  {video}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
