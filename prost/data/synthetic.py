"""Synthetic text-to-video benchmark that needs both object (spatial) and event (temporal) granularity.

Each video is 20 frames at 8 fps (2.5 s), 96x72 pixels, H.264 (libx264 superfast, CRF 18, yuv420p) in mp4.
Resizing to the tiny model's 64 px and centre-cropping keep the central 72x72 square; actors stay inside it.
Grammar of a scene:

* 1-3 actors (1: 10%, 2: 45%, 3: 45%) on a plain dark background (16, 16, 24). An actor is a colour and a shape; the
  colours of a scene (recolour targets included) are distinct, and so are its shapes. Colours: red, green, blue,
  yellow, purple, orange, white. Shapes: circle, square, triangle, cross, star, 18 px across (x0.6 to x1.4 while
  growing or shrinking). Each actor keeps to its own quadrant of a central 68x68 square, so actors never touch.
* Each actor has one event, uniform over: `moves left|right|up|down` (12 px), `appears`, `disappears`, `grows`
  (x0.6 -> x1.4), `shrinks` (x1.4 -> x0.6), `turns <colour>`. Events run one after another in caption order: 2 still
  frames, then 16 frames split evenly between the events (16, 8 or 5 frames each), then still frames. Moves and size
  changes are gradual; appearing, disappearing and turning happen halfway through the event. Outside its event an
  actor is still and visible, except that one that appears is hidden before and one that disappears is hidden after.
* Caption: the actors' clauses joined by ", then ", e.g. "a red circle moves left, then an orange star appears".
  Train videos get a second caption, a paraphrase joined by " and then " ("slides to the left", "slides upward",
  "shows up", "vanishes", "gets bigger", "gets smaller", "changes to <colour>").

Videos come in families of three, kept in one split: `<family>-base`; `<family>-spatial`, the same scene with one
actor's colour or shape changed to one the scene does not use; `<family>-temporal`, the same scene with one event
time-reversed (left <-> right, up <-> down, appears <-> disappears, grows <-> shrinks, "a red X turns blue" <->
"a blue X turns red") or two events swapped in order, so every actor shows the same states in both videos, in another
order. Families are split 20% test, 5% val, 75% train (rounded counts, by a permutation drawn from the seed): the
default 3000 videos (1000 families) give 2250 train, 150 val and 600 test videos. A family's content derives only
from (seed, family index); the split from (seed, number of families). Families are drawn independently, so a caption
can recur in another family (8 of the 600 default test videos share theirs, mostly single-actor scenes).

Output: `<out>/videos/<family:05d>-<role>.mp4` and `<out>/captions.jsonl`, one line per caption:
{"video": "videos/00012-base.mp4", "caption": "...", "split": "test", "family": 12, "role": "base"}.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image, ImageDraw
from tqdm import tqdm

from prost.errors import ConfigError
from prost.fileio import check_writable

logger = logging.getLogger(__name__)

DEFAULT_VIDEOS = 3000
WIDTH, HEIGHT, FPS, NUM_FRAMES = 96, 72, 8, 20
SPLIT_FRACTIONS = {"test": 0.20, "val": 0.05}  # the rest is train
SPLIT_NAMES = ("train", "val", "test")
ROLES = ("base", "spatial", "temporal")

COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 200, 70),
    "blue": (50, 100, 255),
    "yellow": (240, 220, 40),
    "purple": (170, 70, 230),
    "orange": (255, 140, 20),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle", "cross", "star")
BACKGROUND = (16, 16, 24)

_HALF_SIZE = 9.0  # px; an actor's bounding box is +-_HALF_SIZE * scale around its centre
_MOVE = 12.0  # px
_SCALES = (0.6, 1.4)  # small, large
_SAFE = (14.0, 2.0, 82.0, 70.0)  # x0, y0, x1, y1: a square inside the central crop; actors keep to its quadrants
_MARGIN = 1.0  # px between an actor and its quadrant's border, so actors never touch
_HOLD = 2  # still frames before the first event
_DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
_OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up", "appears": "disappears",
             "disappears": "appears", "grows": "shrinks", "shrinks": "grows"}
_EVENTS = ("moves left", "moves right", "moves up", "moves down", "appears", "disappears", "grows", "shrinks", "turns")
_PARAPHRASE = {"moves left": "slides to the left", "moves right": "slides to the right", "moves up": "slides upward",
               "moves down": "slides downward", "appears": "shows up", "disappears": "vanishes",
               "grows": "gets bigger", "shrinks": "gets smaller", "turns": "changes to"}


@dataclass(frozen=True)
class Actor:
    """One shape and its event; `x, y` is its centre when the event starts."""

    colour: str
    shape: str
    event: str  # an entry of _EVENTS
    x: float
    y: float
    target: str = ""  # new colour of a "turns" event

    def state(self, progress: float) -> tuple[bool, float, float, float, str]:
        """Visible, centre x, centre y, half-size and colour at a progress in [0, 1] through its event."""
        x, y, scale, visible, colour = self.x, self.y, 1.0, True, self.colour
        verb, _, direction = self.event.partition(" ")
        if direction:
            dx, dy = _DIRECTIONS[direction]
            x, y = x + dx * _MOVE * progress, y + dy * _MOVE * progress
        elif verb in ("grows", "shrinks"):
            small, large = _SCALES
            scale = small + (large - small) * (progress if verb == "grows" else 1.0 - progress)
        elif verb in ("appears", "disappears"):
            visible = (progress >= 0.5) == (verb == "appears")
        elif verb == "turns" and progress >= 0.5:
            colour = self.target
        return visible, x, y, _HALF_SIZE * scale, colour

    def reversed(self) -> Actor:
        """The same event played backwards: it ends where this one starts."""
        verb, _, direction = self.event.partition(" ")
        if direction:
            dx, dy = _DIRECTIONS[direction]
            return replace(self, event=f"moves {_OPPOSITE[direction]}", x=self.x + dx * _MOVE, y=self.y + dy * _MOVE)
        if verb == "turns":
            return replace(self, colour=self.target, target=self.colour)
        return replace(self, event=_OPPOSITE[verb])

    def clause(self, paraphrase: bool = False) -> str:
        """E.g. "an orange star turns blue"."""
        article = "an" if self.colour[0] in "aeiou" else "a"
        event = _PARAPHRASE[self.event] if paraphrase else self.event
        return f"{article} {self.colour} {self.shape} {event}{' ' + self.target if self.target else ''}"


Scene = tuple[Actor, ...]  # in event order


def caption(scene: Scene, paraphrase: bool = False) -> str:
    """The scene's caption: its clauses in event order."""
    return (" and then " if paraphrase else ", then ").join(actor.clause(paraphrase) for actor in scene)


def timeline(scene: Scene, frame: int) -> list[tuple[bool, float, float, float, str]]:
    """Every actor's state at a frame: events take equal consecutive slots after _HOLD still frames."""
    slot = (NUM_FRAMES - 2 * _HOLD) // len(scene)
    return [actor.state(min(max((frame - _HOLD - i * slot + 1) / slot, 0.0), 1.0)) for i, actor in enumerate(scene)]


def _sample_scene(rng: np.random.Generator, count: int) -> Scene:
    """Actors with distinct colours and shapes and random events, not yet placed."""
    colours = [str(c) for c in rng.choice(list(COLOURS), size=2 * count, replace=False)]  # second half: targets
    shapes = [str(s) for s in rng.choice(SHAPES, size=count, replace=False)]
    events = [str(e) for e in rng.choice(_EVENTS, size=count)]
    targets = [colours[count + i] if event == "turns" else "" for i, event in enumerate(events)]
    return tuple(Actor(c, s, e, 0.0, 0.0, t) for c, s, e, t in zip(colours, shapes, events, targets))


def _place(scene: Scene, rng: np.random.Generator) -> Scene:
    """Put each actor in its own quadrant of the crop, where its event, played either way, fits whole."""
    x0, y0, x1, y1 = _SAFE
    half_w, half_h = (x1 - x0) / 2, (y1 - y0) / 2
    placed = []
    for actor, quadrant in zip(scene, rng.choice(4, size=len(scene), replace=False)):
        left, top = x0 + half_w * (quadrant % 2) + _MARGIN, y0 + half_h * (quadrant // 2) + _MARGIN
        right, bottom = left + half_w - 2 * _MARGIN, top + half_h - 2 * _MARGIN
        r = _HALF_SIZE * (_SCALES[1] if actor.event in ("grows", "shrinks") else 1.0)
        dx, dy = _DIRECTIONS.get(actor.event.partition(" ")[2], (0, 0))
        x = rng.uniform(left + r - min(dx, 0) * _MOVE, right - r - max(dx, 0) * _MOVE)
        y = rng.uniform(top + r - min(dy, 0) * _MOVE, bottom - r - max(dy, 0) * _MOVE)
        placed.append(replace(actor, x=float(round(x, 1)), y=float(round(y, 1))))
    return tuple(placed)


def _spatial_negative(scene: Scene, rng: np.random.Generator) -> Scene:
    """Change one actor's colour or shape to one the scene does not use."""
    i = int(rng.integers(len(scene)))
    if rng.random() < 0.5:
        used = {a.colour for a in scene} | {a.target for a in scene}
        changed = replace(scene[i], colour=str(rng.choice([c for c in COLOURS if c not in used])))
    else:
        changed = replace(scene[i], shape=str(rng.choice([s for s in SHAPES if s not in {a.shape for a in scene}])))
    return scene[:i] + (changed,) + scene[i + 1:]


def _temporal_negatives(scene: Scene) -> list[Scene]:
    """Every scene that reverses one event or swaps two events' order."""
    candidates = [scene[:i] + (scene[i].reversed(),) + scene[i + 1:] for i in range(len(scene))]
    for i in range(len(scene)):
        for j in range(i + 1, len(scene)):
            swapped = list(scene)
            swapped[i], swapped[j] = scene[j], scene[i]
            candidates.append(tuple(swapped))
    return candidates


def make_family(seed: int, family: int) -> tuple[Scene, Scene, Scene]:
    """Base scene and its spatial and temporal hard negatives, drawn from (seed, family) alone."""
    rng = np.random.default_rng([seed, family])
    # Few single-actor scenes: there are only 490 single-actor captions, so they repeat across families.
    base = _place(_sample_scene(rng, int(rng.choice([1, 2, 3], p=[0.1, 0.45, 0.45]))), rng)
    temporal = _temporal_negatives(base)
    return base, _spatial_negative(base, rng), temporal[int(rng.integers(len(temporal)))]


def _polygon(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = 0.85 * r
        return [(x - h, y - h), (x + h, y - h), (x + h, y + h), (x - h, y + h)]
    if shape == "triangle":
        return [(x, y - r), (x + r, y + 0.8 * r), (x - r, y + 0.8 * r)]
    if shape == "cross":
        t = 0.35 * r
        corners = [(t, r), (t, t), (r, t), (r, -t), (t, -t), (t, -r)]
        return [(x + u, y + v) for u, v in corners] + [(x - u, y - v) for u, v in corners]
    if shape == "star":
        angles = [math.pi * (k / 5 - 0.5) for k in range(10)]
        radii = [r if k % 2 == 0 else 0.45 * r for k in range(10)]
        return [(x + q * math.cos(a), y + q * math.sin(a) + 0.1 * r) for q, a in zip(radii, angles)]
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene) -> np.ndarray:
    """All frames of a scene, uint8 [T, H, W, 3]."""
    frames = np.empty((NUM_FRAMES, HEIGHT, WIDTH, 3), np.uint8)
    for frame in range(NUM_FRAMES):
        image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
        draw = ImageDraw.Draw(image)
        for actor, (visible, x, y, r, colour) in zip(scene, timeline(scene, frame)):
            if not visible:
                continue
            if actor.shape == "circle":
                draw.ellipse((x - r, y - r, x + r, y + r), fill=COLOURS[colour])
            else:
                draw.polygon(_polygon(actor.shape, x, y, r), fill=COLOURS[colour])
        frames[frame] = np.asarray(image)
    return frames


def write_mp4(frames: np.ndarray, path: Path) -> None:
    """Encode uint8 RGB frames [T, H, W, 3] as H.264 yuv420p at FPS, single-threaded so that bytes are reproducible."""
    reformatter = VideoReformatter()
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"preset": "superfast", "crf": "18"})
        stream.codec_context.thread_count = 1
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for rgb in frames:
            yuv = reformatter.reformat(av.VideoFrame.from_ndarray(rgb, format="rgb24"), format="yuv420p", threads=1)
            # Reproducible bytes need both a fresh frame and "superfast": with the reformatter's own frames, or with
            # "veryfast", x264 wrote run-dependent (though identically decoding) bytes for some videos.
            container.mux(stream.encode(av.VideoFrame.from_ndarray(yuv.to_ndarray(), format="yuv420p")))
        container.mux(stream.encode())


class _Task(NamedTuple):
    out: Path
    seed: int
    family: int
    members: int  # the first `members` of ROLES; fewer than 3 only in the last family
    split: str


def _write_family(task: _Task) -> list[dict]:
    """Render and encode a family's videos; returns its caption records."""
    records = []
    for role, scene in list(zip(ROLES, make_family(task.seed, task.family)))[:task.members]:
        video = f"videos/{task.family:05d}-{role}.mp4"
        write_mp4(render(scene), task.out / video)
        captions = [caption(scene)] + ([caption(scene, paraphrase=True)] if task.split == "train" else [])
        records += [{"video": video, "caption": c, "split": task.split, "family": task.family, "role": role}
                    for c in captions]
    return records


def family_splits(families: int, seed: int) -> list[str]:
    """Split of each family: a seeded permutation, the first 20% test, the next 5% val, the rest train."""
    splits = ["train"] * families
    order = np.random.default_rng(seed).permutation(families)
    first = 0
    for split, fraction in SPLIT_FRACTIONS.items():
        count = int(families * fraction + 0.5)
        for family in order[first:first + count]:
            splits[family] = split
        first += count
    return splits


def generate(out: Path, videos: int = DEFAULT_VIDEOS, seed: int = 0, *, workers: int | None = None,
             progress: bool = False) -> Path:
    """Write `videos` synthetic clips and their captions under `out`; returns `out`, a "jsonl" dataset root."""
    if videos < 1:
        raise ConfigError(f"the synthetic set needs at least 1 video, got {videos}")
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    families = math.ceil(videos / len(ROLES))
    splits = family_splits(families, seed)
    tasks = [_Task(out, seed, f, min(len(ROLES), videos - len(ROLES) * f), splits[f]) for f in range(families)]
    records: list[dict] = []
    sizes: Counter[str] = Counter()
    bar = tqdm(total=videos, unit="video", disable=not progress)
    with multiprocessing.get_context().Pool(min(workers or os.cpu_count() or 1, families)) as pool, bar:
        for task, family_records in zip(tasks, pool.imap(_write_family, tasks, chunksize=4)):
            records += family_records
            sizes[task.split] += task.members
            bar.update(task.members)
    with open(out / "captions.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    logger.info("wrote %d videos to %s: %s", videos, out, ", ".join(f"{sizes[s]} {s}" for s in SPLIT_NAMES))
    return out


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add `prost data synth`."""
    data = subparsers.add_parser("data", help="prepare datasets")
    actions = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    synth = actions.add_parser("synth", help="write the synthetic benchmark (videos/*.mp4 and captions.jsonl)",
                               description=__doc__.split("\n\n")[0])
    synth.add_argument("--out", type=Path, required=True, help="output folder (a dataset root)")
    synth.add_argument("--videos", type=int, default=DEFAULT_VIDEOS, help="number of videos (default %(default)s)")
    synth.add_argument("--seed", type=int, default=0, help="content and split seed (default %(default)s)")
    synth.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs)")
    synth.set_defaults(func=_synth)


def _synth(args: argparse.Namespace) -> int:
    check_writable(args.out, folder=True)
    generate(args.out, args.videos, args.seed, workers=args.workers, progress=True)
    return 0
