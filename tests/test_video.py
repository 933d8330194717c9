"""Decoding and preprocessing of real mp4 files written here with PyAV; frame i is a grey level that encodes i."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from PIL import Image

from prost.data.synthetic import FPS, write_mp4
from prost.data.video import CLIP_MEAN, CLIP_STD, decode_video, normalise, preprocess_frame, read_frames, sample_indices
from prost.errors import DataError

S = 32


def grey(i: int) -> int:
    return 8 + 12 * i


def frame_numbers(frames_uint8: np.ndarray) -> list[int]:
    """Read back which source frame each decoded frame shows."""
    return [round((float(f.mean()) - 8) / 12) for f in frames_uint8]


def grey_video(path, count: int, size: tuple[int, int] = (48, 40)):
    frames = np.stack([np.full((size[1], size[0], 3), grey(i), np.uint8) for i in range(count)])
    write_mp4(frames, path)
    return path


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    return grey_video(tmp_path_factory.mktemp("video") / "long.mp4", 20)


def test_sample_indices_follow_the_official_rule():
    assert sample_indices(20, 8).tolist() == [0, 2, 5, 8, 10, 13, 16, 19]
    assert sample_indices(9, 8).tolist() == [0, 1, 2, 3, 4, 5, 6, 8]  # floor(linspace(0, 8, 8)) skips frame 7
    assert sample_indices(5, 8).tolist() == [0, 1, 2, 3, 4]
    assert sample_indices(8, 8).tolist() == list(range(8))


def test_decode_samples_frames_uniformly(long_video):
    video = decode_video(long_video, 8, S)
    assert video.frames.shape == (8, 3, S, S) and video.frames.dtype == np.float32
    assert video.mask.dtype == bool and video.mask.all()
    assert video.source_indices.dtype == np.int64
    assert video.source_indices.tolist() == [0, 2, 5, 8, 10, 13, 16, 19]
    uint8, indices = read_frames(long_video, 8, S)
    assert frame_numbers(uint8) == indices.tolist() == video.source_indices.tolist()
    np.testing.assert_allclose(video.frames, normalise(uint8), atol=1e-6)


def test_short_video_is_padded_with_zeros_and_masked(tmp_path):
    video = decode_video(grey_video(tmp_path / "short.mp4", 5), 8, S)
    assert video.mask.tolist() == [True] * 5 + [False] * 3
    assert video.source_indices.tolist() == [0, 1, 2, 3, 4, -1, -1, -1]
    assert not video.frames[5:].any()
    assert np.abs(video.frames[:5]).sum(axis=(1, 2, 3)).min() > 0


def test_window_keeps_frames_between_start_and_end(long_video):
    # Frame i is shown at i / FPS seconds: 0.5 s .. 1.0 s holds frames 4 .. 8 at 8 fps.
    first, last = round(0.5 * FPS), round(1.0 * FPS)
    video = decode_video(long_video, 8, S, start=0.5, end=1.0)
    assert video.source_indices.tolist() == list(range(first, last + 1)) + [-1] * (8 - (last - first + 1))
    uint8, indices = read_frames(long_video, 3, S, start=0.5, end=1.0)
    assert frame_numbers(uint8) == indices.tolist() == [first, first + 2, last]
    assert decode_video(long_video, 30, S, start=2.0).source_indices[:4].tolist() == [16, 17, 18, 19]
    assert decode_video(long_video, 30, S, end=0.25).mask.sum() == 3


def test_bytes_and_path_decode_equally(long_video):
    from_path = decode_video(long_video, 8, S, start=0.3)
    from_bytes = decode_video(long_video.read_bytes(), 8, S, start=0.3)
    np.testing.assert_array_equal(from_path.frames, from_bytes.frames)
    np.testing.assert_array_equal(from_path.source_indices, from_bytes.source_indices)


def test_frames_the_decoder_drops_are_not_sampled():
    """An mp4 that lost its first keyframe lists 17 frames, but only the 10 of the second GOP decode."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=10, options={"preset": "ultrafast", "g": "10", "bf": "0"})
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        packets = []
        for i in range(20):
            packets += stream.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), grey(i), np.uint8), "rgb24"))
        packets += stream.encode()
        container.mux(packets[3:])
    uint8, indices = read_frames(buffer.getvalue(), 8, S)
    assert indices.tolist() == sample_indices(10, 8).tolist()
    assert frame_numbers(uint8) == [10 + i for i in indices.tolist()]


def test_preprocess_resizes_the_short_side_and_crops_the_centre():
    stripes = np.zeros((30, 90, 3), np.uint8)
    stripes[:, :30, 0] = stripes[:, 30:60, 1] = stripes[:, 60:, 2] = 255  # red | green | blue
    exact = preprocess_frame(Image.fromarray(stripes), 30)  # no resize: the crop keeps the green third
    assert exact.shape == (30, 30, 3) and exact.dtype == np.uint8
    assert (exact == [0, 255, 0]).all()
    resized = preprocess_frame(Image.fromarray(stripes.repeat(2, axis=0).repeat(2, axis=1)), 30)  # 180x60 -> 90x30
    np.testing.assert_allclose(resized[:, 3:-3].reshape(-1, 3).mean(axis=0), [0, 255, 0], atol=2)
    portrait = preprocess_frame(Image.fromarray(stripes.transpose(1, 0, 2).copy()), 15)  # 30x90 -> 15x45
    assert portrait.shape == (15, 15, 3)
    np.testing.assert_allclose(portrait[3:-3].reshape(-1, 3).mean(axis=0), [0, 255, 0], atol=2)


def test_normalise_applies_clip_mean_and_std_channel_first():
    frames = np.zeros((2, 4, 4, 3), np.uint8)
    frames[1] = 255
    out = normalise(frames)
    assert out.shape == (2, 3, 4, 4) and out.dtype == np.float32 and out.flags.c_contiguous
    for c in range(3):
        np.testing.assert_allclose(out[0, c], -CLIP_MEAN[c] / CLIP_STD[c], rtol=1e-6)
        np.testing.assert_allclose(out[1, c], (1 - CLIP_MEAN[c]) / CLIP_STD[c], rtol=1e-6)


def _audio_only(path):
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000, layout="mono")
        for _ in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.rate = 16000
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


@pytest.mark.parametrize("kind", ["corrupt", "empty", "audio-only", "missing", "truncated"])
def test_bad_files_raise_data_error_naming_the_file(tmp_path, long_video, kind):
    path = tmp_path / f"{kind}.mp4"
    if kind == "corrupt":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "audio-only":
        _audio_only(path)
    elif kind == "truncated":
        path.write_bytes(long_video.read_bytes()[:300])
    with pytest.raises(DataError, match=f"{kind}.mp4") as error:
        decode_video(path, 8, S)
    reason = {"empty": "empty", "audio-only": "no video stream", "missing": "no such file"}
    assert reason.get(kind, "") in str(error.value)


@pytest.mark.parametrize("data", [b"", b"not a video at all" * 10])
def test_bad_bytes_raise_data_error(data):
    with pytest.raises(DataError, match="<bytes>"):
        decode_video(data, 8, S)


def test_frames_larger_than_8k_are_refused_before_decoding(long_video, monkeypatch):
    """The limit is read from the stream header; lowered below this 48x40 clip, it must refuse it by its size."""
    import prost.data.video as video

    monkeypatch.setattr(video, "MAX_FRAME_PIXELS", 48 * 40 - 1)
    with pytest.raises(DataError, match=r"48x40 frames exceed 8K"):
        decode_video(long_video, 8, S)


def test_empty_window_and_reversed_window_are_errors(long_video):
    with pytest.raises(DataError, match="zero frames between 5.0 s"):
        decode_video(long_video, 8, S, start=5.0)
    with pytest.raises(DataError, match="before start"):
        decode_video(long_video, 8, S, start=1.0, end=0.5)


def test_sample_fps_keeps_one_frame_per_period_as_the_official_loader(long_video):
    """20 frames at 8 fps (2.5 s): 1 fps keeps frames at 0, 1 and 2 s, then the clip is zero-padded to L."""
    one = decode_video(long_video, 8, S, sample_fps=1.0)
    assert one.source_indices.tolist() == [0, 8, 16, -1, -1, -1, -1, -1]
    assert one.mask.tolist() == [True] * 3 + [False] * 5
    two = decode_video(long_video, 4, S, sample_fps=2.0)  # 5 frames at 0, 0.5, ..., 2 s, then linspace down to 4
    assert two.source_indices.tolist() == [0, 4, 8, 16]


def test_max_source_frames_refuses_long_clips_before_decoding(long_video):
    with pytest.raises(DataError, match="20 frames, more than the limit of 10"):
        decode_video(long_video, 8, S, max_source_frames=10)
