"""Video decoding and CLIP preprocessing with PyAV, PIL and numpy only, so the Triton python backend can import it.

A clip is read in two passes: demuxing alone lists its frames (cheap), then decoding converts only the L frames chosen
by the official uniform rule. Frames are resized (short side, bicubic), centre-cropped and CLIP-normalised as in
`dataloaders/rawvideo_util.py`; missing frames are zeros in normalised space with mask False.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image

from prost.errors import DataError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

VideoSource = str | os.PathLike | bytes

MAX_FRAME_PIXELS = 7680 * 4320  # 8K UHD: larger frames are refused before decoding (memory per RGB frame)
# Below this many pixels per frame, codec threads cost more to start than they save (~1 ms per clip at 96x72).
_THREADING_MIN_PIXELS = 640 * 360


@dataclass(frozen=True)
class DecodedVideo:
    """The L frames of one clip, ready for the video tower."""

    frames: np.ndarray  # float32 [L, 3, S, S], CLIP-normalised, zero rows for padding
    mask: np.ndarray  # bool [L], True = real frame
    source_indices: np.ndarray  # int64 [L], index of the decoded frame used, -1 for padding

    @classmethod
    def from_uint8(cls, frames: np.ndarray, source_indices: np.ndarray, num_frames: int) -> DecodedVideo:
        """Normalise n <= L uint8 frames [n, S, S, 3] and pad them to L; a cache of uint8 frames rebuilds clips so."""
        n, size = len(frames), frames.shape[1]
        padded = np.zeros((num_frames, 3, size, size), np.float32)
        padded[:n] = normalise(frames)
        indices = np.full(num_frames, -1, np.int64)
        indices[:n] = source_indices
        return cls(frames=padded, mask=np.arange(num_frames) < n, source_indices=indices)


def sample_indices(num_available: int, num_frames: int) -> np.ndarray:
    """Official uniform rule: floor(linspace(0, n-1, L)) when more than L frames are available, else all of them."""
    if num_available > num_frames:
        return np.floor(np.linspace(0, num_available - 1, num_frames)).astype(np.int64)
    return np.arange(num_available, dtype=np.int64)


def preprocess_frame(image: Image.Image, image_size: int) -> np.ndarray:
    """Bicubic resize of the short side to S, then a centre S x S crop (torchvision Resize + CenterCrop); uint8."""
    image = image.convert("RGB")
    width, height = image.size
    if width <= height:
        size = (image_size, int(image_size * height / width))
    else:
        size = (int(image_size * width / height), image_size)
    if size != image.size:
        image = image.resize(size, Image.BICUBIC)
    left = int(round((size[0] - image_size) / 2.0))
    top = int(round((size[1] - image_size) / 2.0))
    return np.asarray(image.crop((left, top, left + image_size, top + image_size)))


def normalise(frames_uint8: np.ndarray) -> np.ndarray:
    """CLIP-normalise uint8 frames [L, S, S, 3] into float32 [L, 3, S, S]."""
    frames = np.ascontiguousarray(frames_uint8.transpose(0, 3, 1, 2), dtype=np.float32)  # [L, 3, S, S]
    frames /= 255.0
    frames -= np.asarray(CLIP_MEAN, np.float32)[:, None, None]
    frames /= np.asarray(CLIP_STD, np.float32)[:, None, None]
    return frames


def decode_video(
    source: VideoSource, num_frames: int, image_size: int, start: float | None = None, end: float | None = None,
    *, sample_fps: float | None = None, max_source_frames: int | None = None,
) -> DecodedVideo:
    """Decode L uniformly sampled frames of a clip (a path or an encoded file's bytes), within [start, end] seconds.

    `sample_fps` first keeps one frame per 1/sample_fps seconds (the official loader uses 1 fps); None keeps every
    frame. `max_source_frames` bounds the work: a clip listing more frames is refused before any decoding.
    """
    frames, indices = read_frames(source, num_frames, image_size, start, end, sample_fps=sample_fps,
                                  max_source_frames=max_source_frames)
    return DecodedVideo.from_uint8(frames, indices, num_frames)


def read_frames(
    source: VideoSource, num_frames: int, image_size: int, start: float | None = None, end: float | None = None,
    *, sample_fps: float | None = None, max_source_frames: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode the sampled frames as uint8 [n, S, S, 3] (n <= L) with their source indices [n], without padding."""
    name = "<bytes>" if isinstance(source, bytes) else os.fspath(source)
    if start is not None and end is not None and end < start:
        raise DataError(f"cannot read video {name}: window end {end} s is before start {start} s")
    _check_source(source, name)
    try:
        times = _frame_times(source, name, decode=False)
        if max_source_frames is not None and len(times) > max_source_frames:
            raise DataError(f"cannot read video {name}: {len(times)} frames, more than the limit of {max_source_frames}")
        chosen = _choose(times, num_frames, start, end, name, sample_fps)
        frames = _convert(source, name, chosen, image_size)
        if len(frames) < len(chosen):  # the decoder dropped frames the container lists (e.g. a broken first GOP)
            chosen = _choose(_frame_times(source, name, decode=True), num_frames, start, end, name, sample_fps)
            frames = _convert(source, name, chosen, image_size)
    except av.FFmpegError as exc:
        raise DataError(f"cannot read video {name}: {exc.strerror or exc}") from exc
    missing = [int(i) for i in chosen if i not in frames]
    if missing:
        raise DataError(f"cannot read video {name}: the decoder returned no frame {missing[0]} "
                        f"({len(missing)} of {len(chosen)} sampled frames missing)")
    return np.stack([frames[i] for i in chosen]), chosen


def _check_source(source: VideoSource, name: str) -> None:
    if isinstance(source, bytes):
        if not source:
            raise DataError(f"cannot read video {name}: empty input (0 bytes)")
        return
    if not os.path.exists(source):
        raise DataError(f"cannot read video {name}: no such file")
    if not os.path.isfile(source):
        raise DataError(f"cannot read video {name}: not a file")
    if os.path.getsize(source) == 0:
        raise DataError(f"cannot read video {name}: empty file (0 bytes)")


def _open(source: VideoSource, name: str) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    container = av.open(io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source))
    if not container.streams.video:
        container.close()
        raise DataError(f"cannot read video {name}: no video stream (audio-only or not a video file)")
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > MAX_FRAME_PIXELS:
        container.close()
        raise DataError(f"cannot read video {name}: {width}x{height} frames exceed 8K ({MAX_FRAME_PIXELS} pixels); "
                        f"each decoded frame would take {3 * width * height / 2**20:.0f} MiB")
    if width * height < _THREADING_MIN_PIXELS:
        stream.thread_type = "NONE"
    return container, stream


def _frame_times(source: VideoSource, name: str, decode: bool) -> list[Fraction | None]:
    """Presentation times of the frames in display order: from packets (demuxing only) or from decoded frames."""
    container, stream = _open(source, name)
    with container:
        if decode:
            return [None if f.pts is None else f.pts * stream.time_base for f in container.decode(stream)]
        packets = [p for p in container.demux(stream) if p.size and not p.is_discard]
    if any(p.pts is None for p in packets):
        return [None] * len(packets)
    return sorted(p.pts * stream.time_base for p in packets)


def _choose(
    times: list[Fraction | None], num_frames: int, start: float | None, end: float | None, name: str,
    sample_fps: float | None = None,
) -> np.ndarray:
    """Indices of the frames to keep: those within [start, end] seconds from the first frame, optionally one per
    1/sample_fps seconds (the first frame at or after each sampling time), then sampled uniformly down to L."""
    positions = np.arange(len(times))
    window = ""
    if start is not None or end is not None or sample_fps:
        window = f" between {start if start is not None else 0} s and {end if end is not None else 'the end'}"
        if None in times:
            raise DataError(f"cannot read video {name}: frames have no timestamps, so no window{window} can be cut")
        seconds = np.asarray([float(t - times[0]) for t in times])
        low, high = start if start is not None else 0.0, end if end is not None else np.inf
        positions = positions[(seconds >= low) & (seconds <= high)]
        if sample_fps and positions.size:
            wanted = np.arange(seconds[positions[0]], seconds[positions[-1]] + 1e-9, 1.0 / sample_fps)
            positions = np.unique(positions[np.minimum(np.searchsorted(seconds[positions], wanted - 1e-9),
                                                       positions.size - 1)])
    if positions.size == 0:
        raise DataError(f"cannot read video {name}: it decodes to zero frames{window}")
    return positions[sample_indices(positions.size, num_frames)]


def _convert(source: VideoSource, name: str, chosen: np.ndarray, image_size: int) -> dict[int, np.ndarray]:
    """Decode up to the last chosen frame, converting only the chosen ones; returns {index: uint8 [S, S, 3]}."""
    wanted, last = set(chosen.tolist()), int(chosen[-1])
    reformatter = VideoReformatter()  # one for all frames: a fresh frame would build its own scaler (~0.4 ms each)
    frames = {}
    container, stream = _open(source, name)
    with container:
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                rgb = reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()
                frames[index] = preprocess_frame(Image.fromarray(rgb), image_size)
            if index == last:
                break
    return frames
