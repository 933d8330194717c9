"""Dataset layouts on local disk (the synthetic jsonl, MSR-VTT as in CLIP4Clip, DiDeMo paragraphs) and torch loading.

Layouts, under a root folder:
* "jsonl": `captions.jsonl`, lines {"video": path relative to the root, "caption", "split", optional "video_id",
  "start", "end"}; lines of one video merge into one item.
* "msrvtt": `MSRVTT_train.9k.csv` (video_id), `MSRVTT_data.json` (sentences: all captions of the train videos) and
  `MSRVTT_JSFUSION_test.csv` (1k-A: video_id, sentence); videos at `videos/<video_id>.mp4`; val is the test split.
* "didemo": `{train,test}_list_mp4.txt` (file names) and `{train,test}_data_mp4.json` (LocalizingMoments items);
  a video's descriptions join into one paragraph caption over the whole clip; videos at `videos/<name>`; val is test.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from prost.data.video import DecodedVideo, read_frames
from prost.errors import DataError
from prost.tokenizer import tokenize

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# Files whose presence selects a layout in "auto" mode, in order of precedence.
_MARKERS = {
    "jsonl": ("captions.jsonl",),
    "msrvtt": ("MSRVTT_data.json", "MSRVTT_JSFUSION_test.csv"),
    "didemo": ("train_list_mp4.txt", "test_list_mp4.txt"),
}


@dataclass(frozen=True)
class VideoItem:
    """A video and its captions; `start`/`end` bound the clip in seconds, None for the whole video."""

    video_id: str
    path: Path
    captions: tuple[str, ...]
    start: float | None = None
    end: float | None = None


def load_split(root: Path, split: str, layout: str = "auto", *, expand_captions: bool = False,
               videos_dir: Path | None = None) -> list[VideoItem]:
    """Items of a split, one per video; `expand_captions` makes one single-caption item per (video, caption) pair.

    `videos_dir` overrides where video files are looked up: the root for "jsonl", `root/videos` otherwise.
    """
    root = Path(root)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if not root.is_dir():
        raise DataError(f"dataset root {root} is not a directory")
    layout = detect_layout(root) if layout == "auto" else layout
    if layout not in _LOADERS:
        raise DataError(f"unknown dataset layout {layout!r}; valid: auto, {', '.join(_LOADERS)}")
    items = _LOADERS[layout](root, split, Path(videos_dir) if videos_dir is not None else None)
    if expand_captions:
        return [replace(item, captions=(caption,)) for item in items for caption in item.captions]
    return items


def detect_layout(root: Path) -> str:
    """The layout whose marker files exist under `root`."""
    for layout, markers in _MARKERS.items():
        if any((root / name).is_file() for name in markers):
            return layout
    expected = "; ".join(f"{layout}: {' or '.join(names)}" for layout, names in _MARKERS.items())
    raise DataError(f"cannot tell the dataset layout of {root}: no marker file ({expected})")


def _require(root: Path, layout: str, names: Iterable[str]) -> list[Path]:
    paths = [root / name for name in names]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"the {layout} layout needs {', '.join(missing)} in {root}")
    return paths


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def _json_records(path: Path, fields: Sequence[str], key: str | None = None) -> list[dict[str, Any]]:
    """The records of a JSON list (or of `data[key]`), each checked for `fields`; errors name the file and record."""
    data = _read_json(path)
    records = data.get(key) if key is not None and isinstance(data, dict) else data
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a list of records{f' under {key!r}' if key else ''}")
    for number, record in enumerate(records):
        missing = [f for f in fields if not isinstance(record, dict) or f not in record]
        if missing:
            raise DataError(f"{path}: record {number}{f' of {key!r}' if key else ''} lacks {', '.join(missing)}")
    return records


def _read_csv(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in columns if rows and c not in rows[0]]
    if missing or not rows:
        raise DataError(f"{path} has no rows or lacks the columns {', '.join(missing or columns)}")
    return rows


def _grouped(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Captions by video, in order of first appearance."""
    captions: dict[str, list[str]] = {}
    for video, caption in pairs:
        captions.setdefault(video, []).append(caption)
    return captions


def _load_jsonl(root: Path, split: str, videos_dir: Path | None) -> list[VideoItem]:
    (path,) = _require(root, "jsonl", ["captions.jsonl"])
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
                rows.append((row, str(row["video"]), str(row["caption"]), str(row["split"])))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(f"{path}:{number}: not a {{video, caption, split}} record ({exc!r})") from exc
    present = {row_split for *_, row_split in rows}
    if split == "val" and "val" not in present:
        logger.info("%s has no val split; using test", path)
        split = "test"
    if split not in present:
        raise DataError(f"{path} has no {split!r} rows; splits present: {', '.join(sorted(present)) or 'none'}")
    # A clip is a file and a time window: two windows of one file are two clips (which need distinct ids).
    clips: dict[tuple[str, float | None, float | None], tuple[list[str], set[str | None]]] = {}
    for row, video, caption, row_split in rows:
        if row_split == split:
            captions, names = clips.setdefault((video, _seconds(row, "start", path), _seconds(row, "end", path)),
                                               ([], set()))
            captions.append(caption)
            names.add(None if row.get("video_id") is None else str(row["video_id"]))
    base = videos_dir or root
    items = []
    for (video, start, end), (captions, names) in clips.items():
        if len(names) > 1:
            raise DataError(f"{path}: the lines of {video} ({start}-{end} s) name different video_id values "
                            f"{sorted(map(str, names))}; give every line of a clip the same one")
        (video_id,) = names
        items.append(VideoItem(Path(video).stem if video_id is None else video_id, base / video, tuple(captions),
                               start, end))
    duplicates = [i for i, n in Counter(item.video_id for item in items).items() if n > 1]
    if duplicates:
        raise DataError(f"{path}: videos of the {split} split share the id {duplicates[0]!r}; set distinct video_id")
    return items


def _seconds(row: dict, key: str, path: Path) -> float | None:
    """A record's optional start or end time, in seconds."""
    value = row.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise DataError(f"{path}: {key} of {row['video']} must be a number of seconds or null, got {value!r}")
    return value


def _load_msrvtt(root: Path, split: str, videos_dir: Path | None) -> list[VideoItem]:
    videos_dir = videos_dir or root / "videos"
    if split == "val":
        logger.info("MSR-VTT has no val split; using the 1k-A test split")
    if split in ("val", "test"):
        (test_csv,) = _require(root, "msrvtt", ["MSRVTT_JSFUSION_test.csv"])
        captions = _grouped((r["video_id"], r["sentence"]) for r in _read_csv(test_csv, ("video_id", "sentence")))
    else:
        train_csv, data_json = _require(root, "msrvtt", ["MSRVTT_train.9k.csv", "MSRVTT_data.json"])
        ids = [r["video_id"] for r in _read_csv(train_csv, ("video_id",))]
        wanted = set(ids)
        by_video = _grouped((s["video_id"], s["caption"])
                            for s in _json_records(data_json, ("video_id", "caption"), "sentences")
                            if s["video_id"] in wanted)
        uncaptioned = [i for i in ids if i not in by_video]
        if uncaptioned:
            raise DataError(f"{len(uncaptioned)} train videos have no caption in {data_json} (e.g. {uncaptioned[0]})")
        captions = {i: by_video[i] for i in ids}
    return [VideoItem(video, videos_dir / f"{video}.mp4", tuple(c)) for video, c in captions.items()]


def _load_didemo(root: Path, split: str, videos_dir: Path | None) -> list[VideoItem]:
    videos_dir = videos_dir or root / "videos"
    if split == "val":
        logger.info("DiDeMo has no val split; using the test files")
    name = "train" if split == "train" else "test"
    list_path, data_path = _require(root, "didemo", [f"{name}_list_mp4.txt", f"{name}_data_mp4.json"])
    listed = [line.strip() for line in list_path.read_text().splitlines() if line.strip()]
    moments = _grouped((m["video"], m["description"]) for m in _json_records(data_path, ("video", "description")))
    # Paragraph retrieval over the whole clip; listed videos without descriptions are dropped, as officially.
    return [VideoItem(video, videos_dir / video, (" ".join(moments[video]),)) for video in listed if video in moments]


_LOADERS: dict[str, Callable[[Path, str, Path | None], list[VideoItem]]] = {
    "jsonl": _load_jsonl,
    "msrvtt": _load_msrvtt,
    "didemo": _load_didemo,
}


ClipKey = tuple[Path, float | None, float | None]


def clip_key(item: VideoItem) -> ClipKey:
    """What identifies a decoded clip: the file and the time window."""
    return item.path, item.start, item.end


class FrameCache:
    """LRU of decoded uint8 frames and source indices, bounded in bytes; a worker process fills its own copy."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.bytes = max_bytes, 0
        self._entries: OrderedDict[Any, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Any) -> tuple[np.ndarray, np.ndarray] | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: Any, entry: tuple[np.ndarray, np.ndarray]) -> None:
        size = sum(a.nbytes for a in entry)
        if key in self._entries or size > self.max_bytes:
            return
        self._entries[key] = entry
        self.bytes += size
        while self.bytes > self.max_bytes:
            self.bytes -= sum(a.nbytes for a in self._entries.popitem(last=False)[1])


class ClipDataset(Dataset):
    """(clip, caption) samples, one per item: in training a caption drawn from (seed, epoch, index) alone, so batches
    do not depend on workers or on where a run resumed; otherwise the item's first caption.

    Captions are tokenized once here. A sample of an unreadable video is None (one warning per file and process);
    `collate` drops it, and `preload` drops such items up front. With `cache_bytes`, decoded uint8 frames are kept.
    """

    def __init__(self, items: Sequence[VideoItem], num_frames: int, image_size: int, context_length: int, *,
                 train: bool = False, seed: int = 0, cache_bytes: int = 0, sample_fps: float | None = None) -> None:
        self.num_frames, self.image_size, self.sample_fps = num_frames, image_size, sample_fps
        self.train, self.seed, self.epoch = train, seed, 0
        self.skipped: set[Path] = set()  # unreadable videos met by this process
        self.checked = False  # set by `preload`
        self.cache = FrameCache(cache_bytes)
        # Training draws among all captions; otherwise only the first is used, so only it is tokenized.
        self._select(list(items), [torch.from_numpy(tokenize(list(i.captions if train else i.captions[:1]),
                                                             context_length)) for i in items])

    def _select(self, items: list[VideoItem], tokens: list[torch.Tensor]) -> None:
        """Hold `items` with their token ids [captions, W] int32; video indices number their distinct videos."""
        self.items, self.tokens = items, tokens
        ids: dict[str, int] = {}
        self.video_indices = [ids.setdefault(item.video_id, len(ids)) for item in items]

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's training captions (the sampler's `set_epoch` sets the order)."""
        self.epoch = epoch

    def preload(self, workers: int = 0, agree: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        """Decode each distinct clip once with up to `workers` processes, filling the cache, and drop the items of
        unreadable videos, so every later batch is full (the DDP all-gather needs equal batches). Afterwards a clip
        that fails to decode raises instead of shrinking a batch.

        `agree` maps this process's readable mask (one bool per distinct clip) to the one to keep: under DDP, what
        every rank could read, so that all ranks hold the same items."""
        first: dict[ClipKey, int] = {}
        for index, item in enumerate(self.items):
            first.setdefault(clip_key(item), index)
        loader = DataLoader(list(first.values()), batch_size=None, num_workers=workers, collate_fn=self._read)
        mask = np.zeros(len(first), dtype=bool)
        for n, (key, entry) in enumerate(zip(first, loader)):
            if entry is not None:
                self.cache.put(key, entry)
                mask[n] = True
        readable = {key for key, ok in zip(first, agree(mask) if agree else mask) if ok}
        keep = [i for i, item in enumerate(self.items) if clip_key(item) in readable]
        if len(readable) < len(first):
            logger.warning("skipped %d unreadable videos of %d (%d items)", len(first) - len(readable), len(first),
                           len(self.items) - len(keep))
        self._select([self.items[i] for i in keep], [self.tokens[i] for i in keep])
        self.checked = True

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        entry = self._frames(index)
        if entry is None:
            return None
        video = DecodedVideo.from_uint8(*entry, self.num_frames)
        tokens = self.tokens[index]
        draw = int(np.random.default_rng([self.seed, self.epoch, index]).integers(len(tokens))) if self.train else 0
        return {
            "frames": torch.from_numpy(video.frames),  # [L, 3, S, S]
            "frame_mask": torch.from_numpy(video.mask),  # [L]
            "token_ids": tokens[draw],  # [W] int32
            "video_index": self.video_indices[index],
        }

    def _frames(self, index: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The item's uint8 frames and source indices, from the cache when there; None for an unreadable video."""
        item = self.items[index]
        if item.path in self.skipped:
            return None
        entry = self.cache.get(clip_key(item))
        if entry is None:
            entry = self._decode(item) if self.checked else self._read(index)  # after `preload`, failures raise
            if entry is None:
                self.skipped.add(item.path)
                return None
            self.cache.put(clip_key(item), entry)
        return entry

    def _decode(self, item: VideoItem) -> tuple[np.ndarray, np.ndarray]:
        return read_frames(item.path, self.num_frames, self.image_size, item.start, item.end,
                           sample_fps=self.sample_fps)

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Decode an item's clip, or None with one warning line when its video cannot be decoded."""
        try:
            return self._decode(self.items[index])
        except DataError as exc:
            logger.warning("skipping unreadable video: %s", exc)
            return None


def collate(samples: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Stack the samples of readable videos; `skipped` counts the dropped ones (the only key if all were)."""
    kept = [s for s in samples if s is not None]
    batch = default_collate(kept) if kept else {}
    batch["skipped"] = len(samples) - len(kept)
    return batch


class ClipLoader(DataLoader):
    """A DataLoader of a ClipDataset over `collate` batches: drops batches left empty by unreadable videos and logs
    an epoch's count. Order comes from the sampler; caption draws from the dataset's seed and epoch."""

    def __init__(self, dataset: ClipDataset, **loader_args: Any) -> None:
        super().__init__(dataset, collate_fn=collate, **loader_args)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        skipped = 0
        for batch in super().__iter__():
            skipped += batch.pop("skipped")
            if batch:
                yield batch
        if skipped:
            logger.warning("skipped %d samples of unreadable videos", skipped)
