"""`prost train`: TrainConfig's flags plus the run options (architecture, run directory, resume, budgets)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from prost.checkpoint import load_model
from prost.config import parse_overrides
from prost.errors import ConfigError
from prost.factory import preset_config
from prost.train.config import TrainConfig, add_config_arguments, config_arguments
from prost.train.loop import train
from prost.train.state import STATE_FILE, read_train_config


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a ProST model (official recipe; resumable)")
    p.add_argument("--preset", default="tiny", help="architecture preset name or JSON path (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="architecture override, repeatable (e.g. head.num_events=3)")
    p.add_argument("--out", help="run directory")
    p.add_argument("--resume", metavar="RUN", help="continue RUN exactly where its last checkpoint stopped")
    add_config_arguments(p)
    p.add_argument("--max-minutes", type=float, help="wall-clock budget; stops at a step boundary and saves")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps of the run (then --resume)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's; 1 helps on a busy CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    runtime = {"max_minutes": args.max_minutes, "max_steps": args.max_steps, "threads": args.threads,
               "progress": not args.no_progress}
    fields = config_arguments(args)
    data, workers = fields.pop("data"), fields.pop("workers")
    if args.resume:
        given = sorted(k for k, v in fields.items() if v is not None) + (["data"] if data else []) \
            + (["set"] if args.set else [])
        if given:
            raise ConfigError(f"--resume continues with the run's own configuration; drop {', '.join(given)} "
                              "(only --max-minutes, --max-steps, --workers, --threads apply)")
        run = Path(args.resume)
        if not (run / STATE_FILE).is_file():
            raise ConfigError(f"cannot resume {run}: no {STATE_FILE} (not a run directory, or no checkpoint yet)")
        config = read_train_config(run)
        if workers is not None:
            config = dataclasses.replace(config, workers=workers)
        train(config, run, resume=True, **runtime)
        return 0
    if not data or not args.out:
        raise ConfigError("prost train needs --data and --out (or --resume RUN)")
    model_config = load_model(fields["init"]).config if fields["init"] else preset_config(args.preset)
    if args.set:
        model_config = model_config.replace(**parse_overrides(args.set))
    config = TrainConfig.create(model_config, data, workers=workers, **fields)
    train(config, Path(args.out), **runtime)
    return 0
