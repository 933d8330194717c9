"""Dataset layouts on fixture files written here, and the torch dataset and loader on real mp4 files."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from prost.data.datasets import ClipDataset, ClipLoader, FrameCache, VideoItem, load_split
from prost.data.sampling import EpochBatches
from prost.data.synthetic import write_mp4
from prost.errors import DataError
from prost.tokenizer import tokenize

L, S, W = 4, 32, 16


def write_jsonl(root, rows):
    root.mkdir(parents=True, exist_ok=True)
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


# ------------------------------------------------------------------------------------------------- layouts


def test_jsonl_merges_captions_and_falls_back_from_val_to_test(tmp_path, caplog):
    root = write_jsonl(tmp_path, [
        {"video": "videos/a.mp4", "caption": "a one", "split": "train"},
        {"video": "videos/b.mp4", "caption": "b one", "split": "test", "start": 1.0, "end": 2.5},
        {"video": "videos/a.mp4", "caption": "a two", "split": "train"},
        {"video": "clips/c.mp4", "caption": "c one", "split": "train", "video_id": "clip-c"},
    ])
    train = load_split(root, "train")
    assert [(i.video_id, i.path, i.captions) for i in train] == [
        ("a", root / "videos/a.mp4", ("a one", "a two")), ("clip-c", root / "clips/c.mp4", ("c one",))]
    expanded = load_split(root, "train", expand_captions=True)
    assert [(i.video_id, i.captions) for i in expanded] == [
        ("a", ("a one",)), ("a", ("a two",)), ("clip-c", ("c one",))]
    with caplog.at_level(logging.INFO, logger="prost.data.datasets"):
        val = load_split(root, "val", layout="jsonl")
    assert "no val split; using test" in caplog.text
    assert val == [VideoItem("b", root / "videos/b.mp4", ("b one",), 1.0, 2.5)]
    assert load_split(root, "test", videos_dir=tmp_path / "elsewhere")[0].path == tmp_path / "elsewhere/videos/b.mp4"


def test_jsonl_windows_of_one_file_are_separate_clips(tmp_path):
    root = write_jsonl(tmp_path, [
        {"video": "v.mp4", "caption": "first", "split": "test", "start": 0.0, "end": 2.0, "video_id": "v-0"},
        {"video": "v.mp4", "caption": "second", "split": "test", "start": 2.0, "end": 4.0, "video_id": "v-2"},
        {"video": "v.mp4", "caption": "first again", "split": "test", "start": 0.0, "end": 2.0, "video_id": "v-0"},
    ])
    assert [(i.video_id, i.captions, i.start, i.end) for i in load_split(root, "test")] == [
        ("v-0", ("first", "first again"), 0.0, 2.0), ("v-2", ("second",), 2.0, 4.0)]
    unnamed = write_jsonl(tmp_path / "unnamed", [{"video": "v.mp4", "caption": c, "split": "test", "start": t}
                                                 for c, t in (("a", 0.0), ("b", 2.0))])
    with pytest.raises(DataError, match="share the id 'v'; set distinct video_id"):
        load_split(unnamed, "test")
    partly = write_jsonl(tmp_path / "partly", [{"video": "v.mp4", "caption": "a", "split": "test", "video_id": "v-0"},
                                               {"video": "v.mp4", "caption": "b", "split": "test"}])
    with pytest.raises(DataError, match=r"name different video_id values \['None', 'v-0'\]"):
        load_split(partly, "test")
    listed = write_jsonl(tmp_path / "listed", [{"video": "v.mp4", "caption": "a", "split": "test", "start": [1]}])
    with pytest.raises(DataError, match="start of v.mp4 must be a number of seconds or null, got \\[1\\]"):
        load_split(listed, "test")


def test_jsonl_errors_name_the_problem(tmp_path):
    root = write_jsonl(tmp_path / "only-train", [{"video": "videos/a.mp4", "caption": "a", "split": "train"}])
    with pytest.raises(DataError, match="no 'test' rows; splits present: train"):
        load_split(root, "test")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        load_split(root, "dev")
    broken = write_jsonl(tmp_path / "broken", [{"video": "videos/a.mp4", "split": "train"}])
    with pytest.raises(DataError, match="captions.jsonl:1"):
        load_split(broken, "train")
    twins = write_jsonl(tmp_path / "twins", [{"video": f"{d}/a.mp4", "caption": "a", "split": "train"} for d in "xy"])
    with pytest.raises(DataError, match="share the id 'a'"):
        load_split(twins, "train")


@pytest.fixture
def msrvtt(tmp_path):
    write_csv(tmp_path / "MSRVTT_train.9k.csv", ["video_id"], [["video0"], ["video1"]])
    write_csv(tmp_path / "MSRVTT_JSFUSION_test.csv", ["key", "vid_key", "video_id", "sentence"],
              [["ret0", "msr9", "video9", "a man sings"], ["ret1", "msr8", "video8", "a dog runs"]])
    sentences = [{"video_id": "video0", "caption": "zero a"}, {"video_id": "video9", "caption": "not for training"},
                 {"video_id": "video1", "caption": "one a"}, {"video_id": "video0", "caption": "zero b"}]
    (tmp_path / "MSRVTT_data.json").write_text(json.dumps({"videos": [], "sentences": sentences}))
    return tmp_path


def test_msrvtt_layout_follows_clip4clip(msrvtt, caplog):
    train = load_split(msrvtt, "train")
    assert [(i.video_id, i.path, i.captions) for i in train] == [
        ("video0", msrvtt / "videos/video0.mp4", ("zero a", "zero b")),
        ("video1", msrvtt / "videos/video1.mp4", ("one a",))]
    assert len(load_split(msrvtt, "train", expand_captions=True)) == 3
    test = load_split(msrvtt, "test", "msrvtt", videos_dir=msrvtt / "mp4")
    assert [(i.video_id, i.path, i.captions) for i in test] == [
        ("video9", msrvtt / "mp4/video9.mp4", ("a man sings",)), ("video8", msrvtt / "mp4/video8.mp4", ("a dog runs",))]
    with caplog.at_level(logging.INFO, logger="prost.data.datasets"):
        assert load_split(msrvtt, "val") == load_split(msrvtt, "test")
    assert "1k-A test split" in caplog.text


def test_msrvtt_missing_files_are_named(msrvtt):
    (msrvtt / "MSRVTT_train.9k.csv").unlink()
    with pytest.raises(DataError, match="msrvtt layout needs MSRVTT_train.9k.csv"):
        load_split(msrvtt, "train")
    (msrvtt / "MSRVTT_JSFUSION_test.csv").unlink()
    with pytest.raises(DataError, match="MSRVTT_JSFUSION_test.csv"):
        load_split(msrvtt, "test")


def test_malformed_annotation_records_are_named(msrvtt, tmp_path):
    (msrvtt / "MSRVTT_data.json").write_text(json.dumps({"sentences": [{"video_id": "video0"}]}))
    with pytest.raises(DataError, match=r"MSRVTT_data.json: record 0 of 'sentences' lacks caption"):
        load_split(msrvtt, "train")
    (msrvtt / "MSRVTT_data.json").write_text(json.dumps({"videos": []}))
    with pytest.raises(DataError, match=r"MSRVTT_data.json: expected a list of records under 'sentences'"):
        load_split(msrvtt, "train")
    didemo = tmp_path / "didemo"
    didemo.mkdir()
    (didemo / "test_list_mp4.txt").write_text("t1.mp4\n")
    (didemo / "test_data_mp4.json").write_text(json.dumps([{"video": "t1.mp4", "times": [[0, 0]]}]))
    with pytest.raises(DataError, match=r"test_data_mp4.json: record 0 lacks description"):
        load_split(didemo, "test", "didemo")


def test_didemo_joins_descriptions_into_one_paragraph(tmp_path, caplog):
    for split, videos in (("train", ["v1.mp4", "v2.mp4", "v3.mp4"]), ("test", ["t1.mp4"])):
        (tmp_path / f"{split}_list_mp4.txt").write_text("\n".join(videos) + "\n")
    moments = [{"description": "a man walks in.", "times": [[0, 0], [0, 1]], "video": "v1.mp4"},
               {"description": "a cat jumps", "times": [[2, 3]], "video": "v2.mp4"},
               {"description": "he sits down.", "times": [[4, 5]], "video": "v1.mp4"},
               {"description": "unlisted", "times": [[1, 1]], "video": "v9.mp4"}]
    (tmp_path / "train_data_mp4.json").write_text(json.dumps(moments))
    test_moments = [{"description": "x", "times": [[0, 0]], "video": "t1.mp4"}]
    (tmp_path / "test_data_mp4.json").write_text(json.dumps(test_moments))
    train = load_split(tmp_path, "train")
    assert train == [VideoItem("v1.mp4", tmp_path / "videos/v1.mp4", ("a man walks in. he sits down.",)),
                     VideoItem("v2.mp4", tmp_path / "videos/v2.mp4", ("a cat jumps",))]  # v3 has no description
    with caplog.at_level(logging.INFO, logger="prost.data.datasets"):
        assert [i.video_id for i in load_split(tmp_path, "val", "didemo")] == ["t1.mp4"]
    assert "DiDeMo has no val split" in caplog.text
    (tmp_path / "test_data_mp4.json").unlink()
    with pytest.raises(DataError, match="didemo layout needs test_data_mp4.json"):
        load_split(tmp_path, "test")


def test_layout_detection_errors(tmp_path):
    with pytest.raises(DataError, match="cannot tell the dataset layout"):
        load_split(tmp_path, "train")
    with pytest.raises(DataError, match="unknown dataset layout 'webvid'"):
        load_split(tmp_path, "train", layout="webvid")
    with pytest.raises(DataError, match="not a directory"):
        load_split(tmp_path / "absent", "train")


# ------------------------------------------------------------------------------------------------- torch dataset


def grey_video(path, level: int, count: int = 6):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(np.full((count, 24, 32, 3), level, np.uint8), path)


@pytest.fixture
def clips(tmp_path):
    """Six good videos with two captions each (grey level 20 * (k + 1)) and one corrupt file, in a jsonl root."""
    rows = []
    for k in range(7):
        path = tmp_path / f"videos/v{k}.mp4"
        if k == 3:
            path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(500))
        else:
            grey_video(path, 20 * (k + 1), count=3 + k)
        rows += [{"video": f"videos/v{k}.mp4", "caption": f"clip {k} {variant}", "split": "train"}
                 for variant in ("first", "second")]
    return load_split(write_jsonl(tmp_path, rows), "train")


def test_samples_hold_frames_masks_tokens_and_video_index(clips):
    dataset = ClipDataset(clips, L, S, W)
    sample = dataset[0]
    assert sample["frames"].shape == (L, 3, S, S) and sample["frames"].dtype == torch.float32
    assert sample["frame_mask"].tolist() == [True, True, True, False]  # v0 has 3 frames
    assert not sample["frames"][3].any()
    assert sample["token_ids"].dtype == torch.int32
    assert sample["token_ids"].tolist() == tokenize(["clip 0 first"], W)[0].tolist()
    assert dataset[5]["video_index"] == 5


def test_unreadable_video_is_skipped_with_one_warning(clips, caplog):
    dataset = ClipDataset(clips, L, S, W)
    loader = ClipLoader(dataset, batch_size=4)
    with caplog.at_level(logging.WARNING, logger="prost.data.datasets"):
        epochs = [list(loader) for _ in range(2)]
    for batches in epochs:
        assert [b["video_index"].tolist() for b in batches] == [[0, 1, 2], [4, 5, 6]]
        assert batches[0]["frames"].shape == (3, L, 3, S, S) and "skipped" not in batches[0]
    per_file = [r.getMessage() for r in caplog.records if "v3.mp4" in r.getMessage()]
    assert len(per_file) == 1 and "skipping unreadable video" in per_file[0]
    summaries = [r.getMessage() for r in caplog.records if "samples" in r.getMessage()]
    assert summaries == ["skipped 1 samples of unreadable videos"] * 2
    assert dataset.skipped == {clips[3].path}


def test_a_batch_of_only_unreadable_videos_is_dropped(clips):
    loader = ClipLoader(ClipDataset([clips[3], clips[0]], L, S, W), batch_size=1)
    assert [b["video_index"].tolist() for b in loader] == [[1]]


@pytest.mark.parametrize("cache_bytes", [10**7, 0])
def test_preload_drops_unreadable_videos_up_front_with_one_warning_each(clips, caplog, cache_bytes):
    dataset = ClipDataset(clips, L, S, W, cache_bytes=cache_bytes)
    with caplog.at_level(logging.WARNING, logger="prost.data.datasets"):
        dataset.preload()
    assert [item.path for item in dataset.items] == [item.path for k, item in enumerate(clips) if k != 3]
    assert len(dataset.cache) == (6 if cache_bytes else 0)
    assert dataset[3]["token_ids"].tolist() == tokenize(["clip 4 first"], W)[0].tolist()  # tokens follow their item
    assert [dataset[i]["video_index"] for i in range(len(dataset))] == list(range(6))
    per_file = [r.getMessage() for r in caplog.records if "v3.mp4" in r.getMessage()]
    assert len(per_file) == 1 and "skipping unreadable video" in per_file[0]
    assert "skipped 1 unreadable videos of 7 (1 items)" in [r.getMessage() for r in caplog.records]


def test_preload_keeps_only_the_clips_every_rank_could_read(clips):
    """Under DDP the ranks' readable masks are combined (all-reduce MIN): a clip another rank could not read is
    dropped here too, so all ranks hold the same items."""
    seen = []

    def other_rank_lost_clip_1(mask):
        seen.append(mask.tolist())
        return mask & (np.arange(len(mask)) != 1)

    dataset = ClipDataset(clips, L, S, W)
    dataset.preload(agree=other_rank_lost_clip_1)
    assert seen == [[True, True, True, False, True, True, True]]  # this process could not read v3 itself
    assert [item.path for item in dataset.items] == [item.path for k, item in enumerate(clips) if k not in (1, 3)]


def test_preload_decodes_each_clip_once_and_later_failures_raise(clips, monkeypatch):
    """Items sharing a clip (MSR-VTT --expand) decode once; after the check a failing clip is an error, not a
    smaller batch (the DDP all-gather needs equal batches)."""
    import prost.data.datasets as datasets

    decoded = []
    read = datasets.read_frames
    monkeypatch.setattr(datasets, "read_frames", lambda path, *a, **k: decoded.append(path) or read(path, *a, **k))
    expanded = [item for item in clips for _ in range(3)]  # three items per video
    dataset = ClipDataset(expanded, L, S, W, train=True)
    dataset.preload()
    assert sorted(decoded) == sorted(item.path for item in clips) and len(dataset) == 18
    clips[0].path.unlink()
    with pytest.raises(DataError, match="v0.mp4"):
        dataset[0]  # no cache: decoded again, and the file is gone


def test_preloaded_frames_serve_later_epochs_without_the_files(clips):
    cached = ClipDataset(clips, L, S, W, cache_bytes=10**7)
    cached.preload(workers=2)  # frames decoded by worker processes land in this process's cache
    uncached = ClipDataset(clips, L, S, W)
    before = [uncached[i]["frames"] for i in range(len(clips)) if i != 3]
    for item in clips:
        item.path.unlink()
    after = [cached[i]["frames"] for i in range(len(cached))]
    assert len(after) == 6 and all(torch.equal(a, b) for a, b in zip(before, after))
    assert uncached[0] is None and uncached.skipped == {clips[0].path}


def _epoch(dataset: ClipDataset, epoch: int, workers: int, start: int = 0) -> list[tuple[int, tuple[int, ...]]]:
    """(video index, token ids) of an epoch's samples from batch `start` on, loaded the way training loads them."""
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=dataset.seed, drop_last=True)
    sampler.set_epoch(epoch)
    dataset.set_epoch(epoch)
    loader = ClipLoader(dataset, batch_sampler=EpochBatches(sampler, 2, start, len(sampler) // 2), num_workers=workers)
    return [(int(v), tuple(t.tolist())) for b in loader for v, t in zip(b["video_index"], b["token_ids"])]


@pytest.mark.parametrize("workers", [0, 2])
def test_order_and_caption_draws_depend_only_on_seed_epoch_and_index(clips, workers):
    def dataset(seed: int) -> ClipDataset:
        data = ClipDataset(clips, L, S, W, train=True, seed=seed)
        data.preload()
        return data

    data = dataset(seed=7)
    first = [_epoch(data, epoch, workers) for epoch in (0, 1)]
    assert first == [_epoch(dataset(seed=7), epoch, workers=0) for epoch in (0, 1)]  # a fresh dataset, no workers
    assert _epoch(data, 1, workers, start=1) == first[1][2:]  # resumed at the second batch of epoch 1
    assert first != [_epoch(dataset(seed=8), epoch, workers) for epoch in (0, 1)]
    assert first[0] != first[1]  # a new order and new caption draws every epoch
    assert sorted(v for v, _ in first[0]) == list(range(6))  # the unreadable v3 was dropped up front
    assert len({t for epoch in first for _, t in epoch}) > 6  # both captions of some videos were drawn


def test_frame_cache_evicts_least_recently_used_entries_by_bytes():
    entry = (np.zeros(100, np.uint8), np.zeros(0, np.int64))
    cache = FrameCache(max_bytes=250)
    cache.put("a", entry)
    cache.put("b", entry)
    assert cache.get("a") is entry  # a is now the most recently used
    cache.put("c", entry)
    assert cache.get("b") is None and cache.get("a") is entry and cache.get("c") is entry
    assert cache.bytes == 200
    cache.put("huge", (np.zeros(300, np.uint8), np.zeros(0, np.int64)))
    assert cache.get("huge") is None and len(cache) == 2
