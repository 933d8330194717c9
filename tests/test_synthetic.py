"""The synthetic benchmark: determinism, family structure, split sizes, geometry and the `prost data synth` command."""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict

import pytest

from prost.data import synthetic
from prost.data.video import read_frames

COLOURS, SHAPES = set(synthetic.COLOURS), set(synthetic.SHAPES)
REVERSED = {("left", "right"), ("up", "down"), ("appears", "disappears"), ("grows", "shrinks")}


def records(root) -> list[dict]:
    return [json.loads(line) for line in (root / "captions.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synthetic.generate(tmp_path_factory.mktemp("synth") / "a", videos=60, seed=3, workers=2)


def test_same_seed_gives_the_same_files(synth, tmp_path):
    again = synthetic.generate(tmp_path / "b", videos=60, seed=3, workers=1)
    assert (again / "captions.jsonl").read_bytes() == (synth / "captions.jsonl").read_bytes()
    names = sorted(p.name for p in (synth / "videos").glob("*.mp4"))
    assert len(names) == 60
    for name in names:
        assert (again / "videos" / name).read_bytes() == (synth / "videos" / name).read_bytes(), name
    other = synthetic.generate(tmp_path / "c", videos=6, seed=4, workers=1)
    assert [r["caption"] for r in records(other)] != [r["caption"] for r in records(synth)][:len(records(other))]


def test_families_share_a_split_and_train_videos_have_a_paraphrase(synth):
    rows = records(synth)
    splits = defaultdict(set)
    for row in rows:
        splits[row["family"]].add(row["split"])
        assert row["video"] == f"videos/{row['family']:05d}-{row['role']}.mp4"
    assert all(len(s) == 1 for s in splits.values())
    per_video = Counter(row["video"] for row in rows)
    assert all(per_video[row["video"]] == (2 if row["split"] == "train" else 1) for row in rows)
    assert Counter(next(iter(s)) for s in splits.values()) == {"train": 15, "test": 4, "val": 1}


def test_default_split_sizes():
    families = synthetic.DEFAULT_VIDEOS // 3
    sizes = Counter(synthetic.family_splits(families, seed=0))
    assert {split: 3 * n for split, n in sizes.items()} == {"train": 2250, "val": 150, "test": 600}
    assert synthetic.family_splits(families, seed=0) != synthetic.family_splits(families, seed=1)


def _clauses(text: str) -> list[list[str]]:
    """Clauses as word lists without articles."""
    return [[w for w in clause.split() if w not in ("a", "an")] for clause in text.split(", then ")]


def _is_spatial_negative(base: str, negative: str) -> bool:
    diffs = [(x, y) for b, n in zip(_clauses(base), _clauses(negative)) for x, y in zip(b, n) if x != y]
    return len(diffs) == 1 and (set(diffs[0]) <= COLOURS or set(diffs[0]) <= SHAPES)


def _is_temporal_negative(base: str, negative: str) -> bool:
    b, n = _clauses(base), _clauses(negative)
    if b != n and sorted(map(tuple, b)) == sorted(map(tuple, n)):
        return True  # two events swapped
    changed = [(x, y) for x, y in zip(b, n) if x != y]
    if len(changed) != 1:
        return False
    x, y = changed[0]
    if x[2] == "turns":  # "red X turns blue" <-> "blue X turns red"
        return (x[0], x[1], x[3]) == (y[3], y[1], y[0])
    return x[:2] == y[:2] and (x[-1], y[-1]) in REVERSED | {(v, u) for u, v in REVERSED}


def test_test_split_holds_spatial_and_temporal_hard_negatives(synth):
    captions = {(r["family"], r["role"]): r["caption"] for r in records(synth) if r["split"] == "test"}
    families = {family for family, _ in captions}
    assert families
    for family in families:
        base = captions[family, "base"]
        assert _is_spatial_negative(base, captions[family, "spatial"]), (base, captions[family, "spatial"])
        assert _is_temporal_negative(base, captions[family, "temporal"]), (base, captions[family, "temporal"])


def test_scenes_stay_in_the_crop_and_actors_never_touch():
    x0, y0, x1, y1 = synthetic._SAFE
    actors = Counter()
    for family in range(300):
        for scene in synthetic.make_family(0, family):
            actors[len(scene)] += 1
            for frame in range(synthetic.NUM_FRAMES):
                shown = [s for s in synthetic.timeline(scene, frame) if s[0]]
                for _, x, y, r, _ in shown:
                    assert x0 <= x - r and x + r <= x1 and y0 <= y - r and y + r <= y1
                for i, (_, xa, ya, ra, _) in enumerate(shown):
                    assert all(abs(xa - xb) >= ra + rb or abs(ya - yb) >= ra + rb for _, xb, yb, rb, _ in shown[i + 1:])
    assert set(actors) == {1, 2, 3} and 0.05 < actors[1] / 900 < 0.15  # the documented 10% / 45% / 45%


def test_decoded_frames_show_the_actors_colours(synth):
    """At 64 px, the centre of every actor visible in the first frame keeps its colour through H.264 and the crop."""
    size, scale = 64, 64 / synthetic.HEIGHT
    left = round((int(synthetic.WIDTH * scale) - size) / 2)
    checked = 0
    for family in range(5):
        for role, scene in zip(synthetic.ROLES, synthetic.make_family(3, family)):
            first = read_frames(synth / f"videos/{family:05d}-{role}.mp4", 8, size)[0][0].astype(int)
            for visible, x, y, _, colour in synthetic.timeline(scene, 0):
                if visible:
                    pixel = first[round(y * scale), round(x * scale) - left]
                    assert abs(pixel - synthetic.COLOURS[colour]).max() < 48, (family, role, colour, pixel)
                    checked += 1
    assert checked >= 10


def test_cli_writes_the_dataset(tmp_path):
    parser = argparse.ArgumentParser()
    synthetic.register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "synth", "--out", str(tmp_path), "--videos", "4", "--seed", "0",
                              "--workers", "1"])
    assert args.func(args) == 0
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 4
    assert {r["role"] for r in records(tmp_path)} == {"base", "spatial", "temporal"}
