"""Decode a video and sample time steps with decord: RGB frames plus the grayscale frame windows for optical flow.

Steps are spread evenly at `fps` across the whole video (step k sits at the middle of its 1/fps slot); each step
also carries the `flow_pairs + 1` consecutive source frames centred on it, from which `flow.py` computes the
5 stacked optical-flow pairs of the TSN temporal stream (paper §4.2). All frames a clip needs are decoded by one
`VideoReader.get_batch` call. Broken inputs raise `VideoDecodeError` naming the file and the reason; a file that
decord cannot read past a point (truncated download) is decoded as far as it goes with PyAV, with a warning.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import av
import cv2
import decord
import numpy as np

from asrn.errors import AsrnError
from asrn.manifest import is_uri


class VideoDecodeError(AsrnError):
    """A video that cannot be decoded; the message names the path and the reason."""


@dataclass
class Clip:
    path: str
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB at the sampled steps
    timestamps: np.ndarray  # (T,) float32 seconds from the first frame
    frame_indices: np.ndarray  # (T,) int64 source frame index of each step (keys of the boxes JSON)
    flow_windows: np.ndarray  # (T, flow_pairs + 1, H', W') uint8 gray consecutive frames centred on each step
    fps: float  # source frame rate
    num_frames: int  # source frames decoded
    width: int  # source size
    height: int
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Probe:
    width: int
    height: int
    fps: float
    header_frames: int  # 0 when the container does not say
    duration: float  # seconds, 0.0 when the container does not say


def scaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(w, h) shrunk so the long side is at most `max_side`, aspect kept; never enlarged."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def flow_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) with the short side equal to `short_side`, aspect kept."""
    scale = short_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def sample_indices(num_frames: int, src_fps: float, fps: float, max_steps: int | None = None) -> np.ndarray:
    """Source frame index of each step: T = round(duration * fps) steps (at least 1, at most num_frames or
    max_steps), step k at the middle of slot k of T equal slots covering the video. (T,) int64."""
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    duration = num_frames / src_fps
    steps = min(num_frames, max(1, round(duration * fps)))
    if max_steps is not None:
        steps = max(1, min(steps, max_steps))
    return np.minimum(((np.arange(steps) + 0.5) * num_frames / steps).astype(np.int64), num_frames - 1)


def window_indices(steps: np.ndarray, num_frames: int, length: int) -> np.ndarray:
    """(T, length) consecutive source indices centred on each step, shifted to stay inside the video (and
    repeating the last frame when the video is shorter than `length`). With 6 frames the window of step i is
    i-2 .. i+3, so the middle flow pair is (i, i+1)."""
    start = steps - (length - 1) // 2
    start = np.clip(start, 0, max(0, num_frames - length))
    return np.minimum(start[:, None] + np.arange(length)[None, :], num_frames - 1).astype(np.int64)


def decode_clip(path: str, fps: float = 2.0, flow_pairs: int = 5, flow_side: int = 112, max_side: int | None = 360,
                max_steps: int | None = None) -> Clip:
    """Decode `path` (local file or a URI pyarrow can open) and sample steps at `fps`; see the module docstring."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if flow_pairs < 0 or flow_side < 1:
        raise ValueError(f"flow_pairs must be >= 0 and flow_side >= 1, got {flow_pairs}, {flow_side}")
    with _local_copy(path) as local:
        probe = _probe(local, path)
        out_w, out_h = scaled_size(probe.width, probe.height, max_side)
        warnings: list[str] = []
        try:
            num_frames, src_fps, frames_by_index, times_by_index = _decode_decord(
                local, path, probe, out_w, out_h, fps, flow_pairs, max_steps)
        except (decord.DECORDError, RuntimeError) as e:
            reason = _first_line(str(e))
            num_frames, src_fps, frames_by_index, times_by_index = _decode_pyav(
                local, path, probe, out_w, out_h, fps, flow_pairs, max_steps, reason)
            warnings.append(f"{path}: decord could not read the file ({reason}); decoded {num_frames} frames "
                            f"with PyAV (header says {probe.header_frames or 'unknown'}): truncated or corrupt")
    if probe.duration > 0 and num_frames / src_fps < 0.8 * probe.duration - 1.0 / src_fps:
        warnings.append(f"{path}: {num_frames} frames ({num_frames / src_fps:.2f} s) but the header says "
                        f"{probe.duration:.2f} s: the file may be truncated")
    steps = sample_indices(num_frames, src_fps, fps, max_steps)
    windows = window_indices(steps, num_frames, flow_pairs + 1)
    flow_w, flow_h = flow_size(out_w, out_h, flow_side)
    gray = {i: _to_gray(frames_by_index[i], flow_w, flow_h) for i in np.unique(windows).tolist()}
    return Clip(
        path=path,
        frames=np.stack([frames_by_index[i] for i in steps.tolist()]),  # (T, H, W, 3)
        timestamps=np.asarray([times_by_index[i] for i in steps.tolist()], dtype=np.float32),  # (T,)
        frame_indices=steps,
        flow_windows=np.stack([np.stack([gray[i] for i in row]) for row in windows.tolist()]),  # (T, P+1, H', W')
        fps=float(src_fps),
        num_frames=int(num_frames),
        width=probe.width,
        height=probe.height,
        warnings=warnings,
    )


def _needed_indices(num_frames: int, src_fps: float, fps: float, flow_pairs: int,
                    max_steps: int | None) -> np.ndarray:
    steps = sample_indices(num_frames, src_fps, fps, max_steps)
    return np.unique(np.concatenate([steps, window_indices(steps, num_frames, flow_pairs + 1).ravel()]))


def _decode_decord(local: str, path: str, probe: _Probe, out_w: int, out_h: int, fps: float, flow_pairs: int,
                   max_steps: int | None) -> tuple[int, float, dict[int, np.ndarray], dict[int, float]]:
    resize = {} if (out_w, out_h) == (probe.width, probe.height) else {"width": out_w, "height": out_h}
    reader = decord.VideoReader(local, ctx=decord.cpu(0), **resize)
    num_frames = len(reader)
    if num_frames == 0:
        raise VideoDecodeError(f"{path}: the video stream has zero frames")
    src_fps = float(reader.get_avg_fps()) or probe.fps
    if not math.isfinite(src_fps) or src_fps <= 0:
        raise VideoDecodeError(f"{path}: no usable frame rate (got {src_fps})")
    needed = _needed_indices(num_frames, src_fps, fps, flow_pairs, max_steps)
    decord.bridge.set_bridge("native")  # thread-local; get_batch then returns decord NDArrays
    batch = reader.get_batch(needed.tolist()).asnumpy()  # (N, H, W, 3) uint8
    stamps = reader.get_frame_timestamp(np.concatenate([[0], needed]).tolist())[:, 0]
    times = (stamps[1:] - stamps[0]).astype(np.float64)
    if not np.all(np.isfinite(times)) or (len(times) > 1 and np.any(np.diff(times) <= 0)):
        times = needed / src_fps  # broken timestamps: fall back to the nominal rate
    frames = {int(i): batch[k] for k, i in enumerate(needed)}
    return num_frames, src_fps, frames, {int(i): float(t) for i, t in zip(needed, times, strict=True)}


def _decode_pyav(local: str, path: str, probe: _Probe, out_w: int, out_h: int, fps: float, flow_pairs: int,
                 max_steps: int | None, reason: str) -> tuple[int, float, dict[int, np.ndarray], dict[int, float]]:
    """Sequential decode as far as the file goes: one pass to count frames, one to keep the needed ones."""
    num_frames = sum(1 for _ in _pyav_frames(local))
    if num_frames == 0:
        raise VideoDecodeError(f"{path}: no frame could be decoded (truncated or corrupt; decord: {reason})")
    src_fps = probe.fps
    needed = set(_needed_indices(num_frames, src_fps, fps, flow_pairs, max_steps).tolist())
    frames: dict[int, np.ndarray] = {}
    times: dict[int, float] = {}
    first_time: float | None = None
    for index, frame in enumerate(_pyav_frames(local)):
        if first_time is None:
            first_time = frame.time if frame.time is not None else 0.0
        if index in needed:
            frames[index] = frame.to_ndarray(format="rgb24", width=out_w, height=out_h)
            times[index] = (frame.time - first_time) if frame.time is not None else index / src_fps
        if index >= num_frames - 1:
            break
    return num_frames, src_fps, frames, times


def _pyav_frames(local: str) -> Iterator[av.VideoFrame]:
    """Frames in presentation order until the end of the file or the first decoding error."""
    with av.open(local) as container:
        try:
            yield from container.decode(video=0)
        except (av.FFmpegError, EOFError):
            return


def _probe(local: str, path: str) -> _Probe:
    """Cheap checks before decord sees the file (decord can crash on some broken inputs)."""
    if not os.path.exists(local):
        raise VideoDecodeError(f"{path}: file not found")
    if not os.path.isfile(local):
        raise VideoDecodeError(f"{path}: not a regular file")
    if os.path.getsize(local) == 0:
        raise VideoDecodeError(f"{path}: file is empty (0 bytes)")
    with open(local, "rb") as f:
        head = f.read(512)
    if _looks_like_text(head):
        raise VideoDecodeError(f"{path}: not a video (looks like a text file)")
    try:
        with av.open(local) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path}: no video stream (zero frames; audio-only or empty container)")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            duration = container.duration / av.time_base if container.duration else 0.0
            header_frames = int(stream.frames or 0)
    except av.FFmpegError as e:
        if head[4:8] == b"ftyp":  # an MP4/MOV whose index (moov atom) never arrived
            raise VideoDecodeError(f"{path}: truncated MP4/MOV (no moov atom index; {_first_line(str(e))})") from e
        raise VideoDecodeError(f"{path}: not a video, or truncated/corrupt ({_first_line(str(e))})") from e
    if width <= 0 or height <= 0:
        raise VideoDecodeError(f"{path}: video stream has no frame size ({width}x{height})")
    return _Probe(width=width, height=height, fps=float(rate) if rate else 25.0, header_frames=header_frames,
                  duration=duration)


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@contextmanager
def _local_copy(path: str) -> Iterator[str]:
    """A local path for `path`: itself, or a temporary copy of a URI (s3://, gs://, ...) fetched with pyarrow."""
    if not is_uri(path):
        yield path
        return
    import pyarrow.fs

    fd, local = tempfile.mkstemp(suffix=os.path.splitext(path.split("?", 1)[0])[1])
    try:
        try:
            filesystem, remote = pyarrow.fs.FileSystem.from_uri(path)
            with os.fdopen(fd, "wb") as dst, filesystem.open_input_stream(remote) as src:
                shutil.copyfileobj(src, dst, length=1 << 20)
        except (OSError, ValueError) as e:  # pyarrow raises OSError subclasses (FileNotFoundError, ...)
            raise VideoDecodeError(f"{path}: cannot fetch ({_first_line(str(e))})") from e
        yield local
    finally:
        os.unlink(local)


def _to_gray(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    if gray.shape != (height, width):
        interpolation = cv2.INTER_AREA if width < gray.shape[1] else cv2.INTER_LINEAR
        gray = cv2.resize(gray, (width, height), interpolation=interpolation)
    return gray


def _first_line(text: str) -> str:
    """First line of an error, without decord's `[hh:mm:ss] /path/to/file.cc:123: ` prefix."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[0] if lines else repr(text)
    return re.sub(r"^\[[\d:]+\] \S+:\d+: (Error: )?", "", line)[:200]
