"""Decode a video and sample time steps: RGB frames plus the grayscale frame windows for optical flow.

Steps are spread evenly at `fps` across the whole video (step k sits at the middle of its 1/fps slot); each step
also carries the `flow_pairs + 1` consecutive source frames centred on it, from which `flow.py` computes the
5 stacked optical-flow pairs of the TSN temporal stream (paper §4.2). Broken inputs raise `VideoDecodeError` naming
the file and the reason.

Two decoders give the same frames: decord (random access, `VideoReader.get_batch`) where it imports, which is x86_64
Linux and Windows (decord 0.6.0 has no other wheels), and PyAV elsewhere (one sequential pass). Both count the
frames the container lists, sample the same indices, decode them at full size as RGB and shrink them with the same
`cv2.resize` (INTER_AREA), so the frames match bit for bit where both ffmpeg builds decode alike: H.264, VP9 and
MJPEG here. Known differences, both from decord's older bundled ffmpeg (4.1) against PyAV's: MPEG-4 Part 2 (its
IDCT) differs by at most a few levels on a few pixels, and 4:2:0 video of odd height places chroma differently
(mean under one level, up to ~40 at colour edges). `ASRN_DECODER=pyav|decord` (or `decoder=`) picks one; `DECODER`
is the default here. A file that the chosen decoder cannot read to the last frame it needs (truncated download) is
decoded as far as it goes with PyAV, with a warning.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import av
import cv2
import numpy as np

from asrn.errors import AsrnError
from asrn.manifest import is_uri

try:  # decord 0.6.0 has wheels for x86_64 Linux and Windows only; elsewhere PyAV decodes the same frames
    import decord
except (ImportError, OSError):  # OSError: a wheel whose bundled libraries do not load
    decord = None

DECODERS = ("decord", "pyav")
DECODER_ENV = "ASRN_DECODER"  # decord | pyav: overrides DECODER (tests, or a user who wants one or the other)
DECODER = "decord" if decord is not None else "pyav"  # the default on this machine
DECORD_CHUNK = 32  # frames per decord get_batch call: full-size frames are shrunk before the next chunk


class VideoDecodeError(AsrnError):
    """A video that cannot be decoded; the message names the path and the reason."""


class DecoderError(AsrnError):
    """An unknown decoder name, or decord asked for where it does not import; the message names the setting."""


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
    decoder: str = DECODER  # which decoder produced the frames ("pyav" when decord could not read the file)
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


def choose_decoder(decoder: str | None = None) -> str:
    """`decoder`, else $ASRN_DECODER, else DECODER; refuses an unknown name and decord where it does not import."""
    where = "decoder" if decoder else DECODER_ENV
    name = decoder or os.environ.get(DECODER_ENV) or DECODER
    if name not in DECODERS:
        raise DecoderError(f"{where}={name!r}: expected one of {', '.join(DECODERS)}")
    if name == "decord" and decord is None:
        raise DecoderError(f"{where}=decord, but decord does not import here (it has wheels for x86_64 Linux and "
                           f"Windows only): use pyav, which decodes the same frames")
    return name


def decode_clip(path: str, fps: float = 2.0, flow_pairs: int = 5, flow_side: int = 112, max_side: int | None = 360,
                max_steps: int | None = None, decoder: str | None = None) -> Clip:
    """Decode `path` (local file or a URI pyarrow can open) and sample steps at `fps`; see the module docstring.

    `decoder`: "decord" or "pyav"; None reads $ASRN_DECODER, else DECODER.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if flow_pairs < 0 or flow_side < 1:
        raise ValueError(f"flow_pairs must be >= 0 and flow_side >= 1, got {flow_pairs}, {flow_side}")
    decoder = choose_decoder(decoder)

    def plan(num_frames: int, src_fps: float) -> np.ndarray:
        return _needed_indices(num_frames, src_fps, fps, flow_pairs, max_steps)

    with _local_copy(path) as local:
        probe = _probe(local, path)
        size = scaled_size(probe.width, probe.height, max_side)
        warnings: list[str] = []
        try:
            decode = _decode_decord if decoder == "decord" else _decode_pyav
            decoded = decode(local, path, probe, size, plan)
        except _Unreadable as e:
            decoded = _decode_readable(local, path, probe, size, plan, e.reason, e.readable)
            warnings.append(f"{path}: {decoder} could not read the file ({e.reason}); decoded {decoded.num_frames} "
                            f"frames with PyAV (header says {probe.header_frames or 'unknown'}): truncated or corrupt")
            decoder = "pyav"
    num_frames, src_fps, frames_by_index, times_by_index = decoded
    if probe.duration > 0 and num_frames / src_fps < 0.8 * probe.duration - 1.0 / src_fps:
        warnings.append(f"{path}: {num_frames} frames ({num_frames / src_fps:.2f} s) but the header says "
                        f"{probe.duration:.2f} s: the file may be truncated")
    steps = sample_indices(num_frames, src_fps, fps, max_steps)
    windows = window_indices(steps, num_frames, flow_pairs + 1)
    flow_w, flow_h = flow_size(*size, flow_side)
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
        decoder=decoder,
        warnings=warnings,
    )


class _Decoded(NamedTuple):
    num_frames: int  # source frames: what the container lists (decord's index, PyAV's packets), or could be read
    src_fps: float
    frames: dict[int, np.ndarray]  # source index -> (H, W, 3) uint8 RGB, shrunk to the clip's size
    times: dict[int, float]  # source index -> seconds from the first frame


class _Unreadable(Exception):
    """The chosen decoder stopped before the last frame a clip needs; `readable`: frames PyAV decoded, if known."""

    def __init__(self, reason: str, readable: int | None = None):
        super().__init__(reason)
        self.reason, self.readable = reason, readable


Plan = Callable[[int, float], np.ndarray]  # (num_frames, src_fps) -> sorted source indices a clip needs


def _needed_indices(num_frames: int, src_fps: float, fps: float, flow_pairs: int,
                    max_steps: int | None) -> np.ndarray:
    steps = sample_indices(num_frames, src_fps, fps, max_steps)
    return np.unique(np.concatenate([steps, window_indices(steps, num_frames, flow_pairs + 1).ravel()]))


def _shrink(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) full-size frame -> (h, w, 3) at size (w, h): one resize for both decoders (area averaging)."""
    if (frame.shape[1], frame.shape[0]) == size:
        return np.ascontiguousarray(frame)
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def _relative_times(needed: np.ndarray, seconds: np.ndarray, src_fps: float) -> dict[int, float]:
    """Index -> seconds from the first frame; broken timestamps (missing, not increasing) -> the nominal rate."""
    times = np.asarray(seconds, np.float64)
    if not np.all(np.isfinite(times)) or (len(times) > 1 and np.any(np.diff(times) <= 0)):
        times = needed / src_fps
    return {int(i): float(t) for i, t in zip(needed, times, strict=True)}


def _decode_decord(local: str, path: str, probe: _Probe, size: tuple[int, int],
                   plan: Plan) -> _Decoded:
    """decord: frames counted by its index, the needed ones fetched with get_batch, DECORD_CHUNK at a time."""
    try:
        reader = decord.VideoReader(local, ctx=decord.cpu(0))  # full size: resizing is _shrink's, as for PyAV
        num_frames = len(reader)
        if num_frames == 0:
            raise VideoDecodeError(f"{path}: the video stream has zero frames")
        src_fps = float(reader.get_avg_fps()) or probe.fps
        if not math.isfinite(src_fps) or src_fps <= 0:
            raise VideoDecodeError(f"{path}: no usable frame rate (got {src_fps})")
        needed = plan(num_frames, src_fps)
        frames: dict[int, np.ndarray] = {}
        for start in range(0, len(needed), DECORD_CHUNK):
            chunk = needed[start:start + DECORD_CHUNK]
            with decord.bridge.use_torch():  # DLPack, no copy: NDArray.asnumpy() would copy every full-size frame
                batch = reader.get_batch(chunk.tolist()).numpy()  # (n, H, W, 3) uint8
            frames.update((int(i), _shrink(frame, size)) for i, frame in zip(chunk, batch, strict=True))
        stamps = reader.get_frame_timestamp(np.concatenate([[0], needed]).tolist())[:, 0]
    except (decord.DECORDError, RuntimeError) as e:
        raise _Unreadable(_first_line(str(e))) from e
    return _Decoded(num_frames, src_fps, frames, _relative_times(needed, stamps[1:] - stamps[0], src_fps))


def _decode_pyav(local: str, path: str, probe: _Probe, size: tuple[int, int], plan: Plan) -> _Decoded:
    """PyAV: frames counted from the stream's packets (as decord's index counts them; no decoding), then one
    sequential pass up to the last needed frame."""
    num_frames = _count_packets(local)
    if num_frames == 0:
        raise VideoDecodeError(f"{path}: the video stream has zero frames")
    needed = plan(num_frames, probe.fps)
    frames, seconds, decoded = _pyav_keep(local, needed, size)
    if decoded <= needed[-1]:
        raise _Unreadable(f"decoding stopped after {decoded} of the {num_frames} frames the container lists",
                          decoded)
    return _Decoded(num_frames, probe.fps, frames, _relative_times(needed, seconds, probe.fps))


def _decode_readable(local: str, path: str, probe: _Probe, size: tuple[int, int], plan: Plan, reason: str,
                     readable: int | None) -> _Decoded:
    """As far as the file goes, with PyAV: the frames that decode (counted by one pass unless known) are the video."""
    num_frames = readable if readable is not None else sum(1 for _ in _pyav_frames(local))
    if num_frames == 0:
        raise VideoDecodeError(f"{path}: no frame could be decoded (truncated or corrupt; {reason})")
    needed = plan(num_frames, probe.fps)
    frames, seconds, _ = _pyav_keep(local, needed, size)
    return _Decoded(num_frames, probe.fps, frames, _relative_times(needed, seconds, probe.fps))


def _count_packets(local: str) -> int:
    """Video packets that carry data, as far as the file can be read: one per frame, as in decord's index."""
    count = 0
    with av.open(local) as container:
        try:
            for packet in container.demux(video=0):
                count += packet.size > 0
        except (av.FFmpegError, EOFError):
            pass
    return count


def _pyav_keep(local: str, needed: np.ndarray, size: tuple[int, int]) -> tuple[dict[int, np.ndarray], np.ndarray,
                                                                                int]:
    """One pass up to needed[-1]: (needed frames shrunk to size, their seconds from the first frame (NaN where a
    frame has no time), frames decoded)."""
    wanted, last = set(needed.tolist()), int(needed[-1])
    frames: dict[int, np.ndarray] = {}
    seconds: dict[int, float] = {}
    first: float | None = None
    decoded = 0
    for index, frame in enumerate(_pyav_frames(local)):
        decoded = index + 1
        if index == 0:
            first = frame.time
        if index in wanted:
            frames[index] = _shrink(frame.to_ndarray(format="rgb24"), size)  # (H, W, 3) full size, then shrunk
            seconds[index] = frame.time - first if frame.time is not None and first is not None else math.nan
        if index >= last:
            break
    return frames, np.asarray([seconds.get(int(i), math.nan) for i in needed]), decoded


def _pyav_frames(local: str) -> Iterator[av.VideoFrame]:
    """Frames in presentation order until the end of the file or the first decoding error."""
    with av.open(local) as container:
        try:
            yield from container.decode(video=0)
        except (av.FFmpegError, EOFError):
            return


def _probe(local: str, path: str) -> _Probe:
    """Cheap checks before a decoder sees the file (decord can crash on some broken inputs)."""
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
