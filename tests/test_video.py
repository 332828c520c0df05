"""decode_clip: sampling, flow windows, sizes and rates, codecs, broken files, URIs, a real photo; decord and PyAV
give the same frames."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from asrn import video
from asrn.video import Clip, VideoDecodeError, decode_clip, sample_indices, window_indices


def write_video(path: Path, frames: list[np.ndarray], codec: str = "libx264", rate: Fraction | int = 10,
                pix_fmt: str = "yuv420p", **container_options: str) -> Path:
    """Encode RGB frames (H, W, 3) uint8 with PyAV."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w", options=container_options) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = {"threads": "1"}
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def counter_frames(n: int, width: int = 160, height: int = 120) -> list[np.ndarray]:
    """Frame i is flat grey 8*i, so a decoded frame tells its own index."""
    return [np.full((height, width, 3), 8 * i, np.uint8) for i in range(n)]


@pytest.fixture(scope="module")
def counter_video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "counter.mp4", counter_frames(30))  # 3 s at 10 fps


def test_sampling_and_flow_windows(counter_video):
    clip = decode_clip(str(counter_video), fps=2.0)
    assert isinstance(clip, Clip) and clip.warnings == []
    assert (clip.num_frames, clip.fps, clip.width, clip.height) == (30, 10.0, 160, 120)
    assert len(clip.frames) == 6  # 3 s at 2 steps a second
    assert clip.frames.shape == (6, 120, 160, 3) and clip.frames.dtype == np.uint8
    assert clip.frame_indices.dtype == np.int64 and clip.timestamps.dtype == np.float32
    assert np.all(np.diff(clip.timestamps) > 0) and np.all(np.diff(clip.frame_indices) > 0)
    assert clip.frame_indices.min() >= 0 and clip.frame_indices.max() < 30
    np.testing.assert_allclose(clip.timestamps, clip.frame_indices / 10.0, atol=1e-4)
    assert clip.flow_windows.shape == (6, 6, 112, 149) and clip.flow_windows.dtype == np.uint8
    # each decoded frame shows its own index: the steps and the windows are the frames they claim to be
    np.testing.assert_allclose(clip.frames.reshape(6, -1).mean(1), 8 * clip.frame_indices, atol=3)
    windows = window_indices(clip.frame_indices, 30, 6)
    assert windows[0].tolist() == [0, 1, 2, 3, 4, 5]  # step 2 (0.25 s) clamped at the start
    assert windows[-1].tolist() == [24, 25, 26, 27, 28, 29]  # step 27 clamped at the end
    assert windows[2].tolist() == [10, 11, 12, 13, 14, 15]  # step 12: centred, i-2 .. i+3
    np.testing.assert_allclose(clip.flow_windows.reshape(6, 6, -1).mean(2), 8 * windows, atol=3)


def test_max_side_and_max_steps(counter_video):
    clip = decode_clip(str(counter_video), fps=5.0, max_side=80, max_steps=4, flow_side=32, flow_pairs=2)
    assert clip.frames.shape == (4, 60, 80, 3)
    assert clip.flow_windows.shape == (4, 3, 32, 43)
    assert (clip.width, clip.height) == (160, 120)  # source size


def test_sample_indices_edge_cases():
    assert sample_indices(1, 25.0, 2.0).tolist() == [0]  # a one-frame video still has a step
    assert sample_indices(5, 25.0, 2.0).tolist() == [2]
    assert len(sample_indices(10, 10.0, 50.0)) == 10  # never more steps than frames
    assert window_indices(np.array([0]), 3, 6).tolist() == [[0, 1, 2, 2, 2, 2]]  # short video: last frame repeats


@pytest.mark.parametrize(("size", "rate", "codec"), [
    ((321, 241), Fraction(15, 2), "mpeg4"),  # odd size (x264 refuses odd sizes in 4:2:0), 7.5 fps
    ((322, 242), Fraction(30000, 1001), "libx264"),  # 29.97 fps
    ((96, 64), 60, "libx264"),
])
def test_odd_sizes_and_rates(tmp_path, size, rate, codec):
    width, height = size
    path = write_video(tmp_path / "odd.mp4", counter_frames(24, width, height), codec=codec, rate=rate)
    clip = decode_clip(str(path), fps=4.0, max_side=200)
    assert (clip.width, clip.height, clip.num_frames) == (width, height, 24)
    assert clip.fps == pytest.approx(float(rate), rel=1e-3)
    assert len(clip.frames) == max(1, round(24 / float(rate) * 4))
    scale = min(1.0, 200 / max(width, height))
    assert clip.frames.shape[1:] == (round(height * scale), round(width * scale), 3)
    np.testing.assert_allclose(clip.frames.reshape(len(clip.frames), -1).mean(1), 8 * clip.frame_indices, atol=4)


@pytest.mark.parametrize(("codec", "suffix"), [
    ("libx264", ".mp4"), ("mpeg4", ".mp4"), ("libvpx-vp9", ".webm"), ("libvpx-vp9", ".mkv")])
def test_codecs(tmp_path, codec, suffix):
    if codec not in av.codecs_available:
        pytest.skip(f"PyAV's ffmpeg has no {codec} encoder")
    path = write_video(tmp_path / f"clip{suffix}", counter_frames(20, 64, 48), codec=codec, rate=10)
    clip = decode_clip(str(path), fps=2.0, flow_side=48)
    assert clip.num_frames == 20 and len(clip.frames) == 4
    assert clip.frames.shape == (4, 48, 64, 3) and clip.flow_windows.shape == (4, 6, 48, 64)
    np.testing.assert_allclose(clip.frames.reshape(4, -1).mean(1), 8 * clip.frame_indices, atol=4)


def test_uri_is_fetched(counter_video):
    clip = decode_clip(counter_video.resolve().as_uri(), fps=1.0)
    assert clip.path.startswith("file://") and len(clip.frames) == 3


def test_broken_files_raise_naming_the_path(tmp_path, counter_video):
    missing = tmp_path / "missing.mp4"
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    truncated = tmp_path / "truncated.mp4"  # moov atom at the end: the first half has no index
    data = counter_video.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    no_video = tmp_path / "no_video.mp4"
    with av.open(str(no_video), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()  # header only: not one frame
    for path, reason in [(missing, "not found"), (empty, "empty"), (text, "text"), (truncated, "truncated"),
                         (no_video, "zero frames"), (tmp_path / "nowhere.mp4", "not found")]:
        with pytest.raises(VideoDecodeError, match=reason) as info:
            decode_clip(str(path))
        assert str(path) in str(info.value)
    with pytest.raises(VideoDecodeError, match="cannot fetch"):
        decode_clip((tmp_path / "absent.mp4").as_uri())


def test_truncated_faststart_mp4_decodes_what_exists(tmp_path):
    rng = np.random.default_rng(0)  # noise: big frames, so half the bytes holds about half the frames
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(20)]
    full = write_video(tmp_path / "full.mp4", frames, movflags="faststart")  # index first, then the frames
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    try:
        clip = decode_clip(str(cut), fps=2.0)
    except VideoDecodeError as e:
        assert str(cut) in str(e)
    else:
        assert 0 < clip.num_frames < 20 and clip.warnings and str(cut) in clip.warnings[0]
        assert len(clip.frames) == len(clip.flow_windows) >= 1


def test_real_photo_clip(tmp_path):
    """2 s of skimage's astronaut photo panning by 2 px a frame: decoded frames match the photo."""
    from skimage import data

    photo = data.astronaut()  # (512, 512, 3) RGB
    crops = [np.ascontiguousarray(photo[2 * i: 2 * i + 448, 2 * i: 2 * i + 448]) for i in range(20)]
    path = write_video(tmp_path / "astronaut.mp4", crops, rate=10)
    clip = decode_clip(str(path), fps=2.0, max_side=224)
    assert clip.frames.shape == (4, 224, 224, 3)
    for frame, index in zip(clip.frames, clip.frame_indices, strict=True):
        expected = cv2.resize(crops[index], (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32)
        got = frame.astype(np.float32)
        assert np.abs(got - expected).mean() < 12
        assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.95
        shifted = cv2.resize(crops[(index + 10) % 20], (224, 224), interpolation=cv2.INTER_AREA)
        assert np.abs(got - shifted).mean() > np.abs(got - expected).mean()  # and it is the right frame
    assert clip.flow_windows.shape == (4, 6, 112, 112)
    assert np.abs(np.diff(clip.flow_windows.astype(np.int16), axis=1)).mean() > 1  # consecutive frames move


# ---------------------------------------------------------------- decord and PyAV: the same frames

needs_decord = pytest.mark.skipif(video.decord is None, reason="decord does not import here (wheels for x86_64 "
                                                               "Linux and Windows only)")


def panned_photo(n: int, width: int, height: int) -> list[np.ndarray]:
    """n frames of skimage's astronaut panning 2 px a frame, at width x height."""
    from skimage import data

    photo = data.astronaut()  # (512, 512, 3) RGB
    return [cv2.resize(np.ascontiguousarray(photo[2 * i: 2 * i + 448, 2 * i: 2 * i + 448]), (width, height),
                       interpolation=cv2.INTER_AREA) for i in range(n)]


def both_decoders(path: Path, **kwargs) -> tuple[Clip, Clip]:
    return decode_clip(str(path), decoder="decord", **kwargs), decode_clip(str(path), decoder="pyav", **kwargs)


@needs_decord
@pytest.mark.parametrize(("size", "rate", "codec", "suffix", "max_side"), [
    ((448, 448), 10, "libx264", ".mp4", 224),  # B-frames; shrunk
    ((322, 242), Fraction(30000, 1001), "libx264", ".mp4", 200),  # 29.97 fps; shrunk to an odd size
    ((160, 120), 10, "libvpx-vp9", ".webm", 360),  # WebM; full size
])
def test_decord_and_pyav_decode_the_same_frames(tmp_path, size, rate, codec, suffix, max_side):
    if codec not in av.codecs_available:
        pytest.skip(f"PyAV's ffmpeg has no {codec} encoder")
    path = write_video(tmp_path / f"clip{suffix}", panned_photo(30, *size), codec=codec, rate=rate)
    a, b = both_decoders(path, fps=3.0, max_side=max_side)
    assert (a.decoder, b.decoder) == ("decord", "pyav") and a.warnings == b.warnings == []
    assert (a.num_frames, a.width, a.height) == (b.num_frames, b.width, b.height) == (30, *size)
    assert a.fps == pytest.approx(b.fps, rel=1e-9) and len(a.frames) >= 3
    np.testing.assert_array_equal(a.frame_indices, b.frame_indices)
    np.testing.assert_allclose(a.timestamps, b.timestamps, atol=1e-6)
    np.testing.assert_array_equal(a.frames, b.frames)  # bit for bit
    np.testing.assert_array_equal(a.flow_windows, b.flow_windows)


@needs_decord
def test_decoders_differ_only_where_their_ffmpeg_builds_do(tmp_path):
    """decord bundles ffmpeg 4.1, PyAV a current one: MPEG-4 Part 2's IDCT differs by a level on a few pixels, and
    4:2:0 of odd height (which x264 refuses to write) gets its chroma placed otherwise (the module docstring)."""
    for size, limit, mean in (((320, 240), 2, 1e-3), ((320, 241), 64, 1.0)):
        path = write_video(tmp_path / f"mpeg4-{size[1]}.mp4", panned_photo(30, *size), codec="mpeg4")
        a, b = both_decoders(path, fps=3.0, max_side=None)
        np.testing.assert_array_equal(a.frame_indices, b.frame_indices)
        difference = np.abs(a.frames.astype(np.int16) - b.frames.astype(np.int16))
        assert difference.max() <= limit and difference.mean() < mean, (size, difference.max(), difference.mean())


@needs_decord
def test_truncated_file_decodes_alike(tmp_path):
    """decord fails on the missing part and PyAV stops there: either way PyAV decodes what exists, the same frames."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(20)]
    data = write_video(tmp_path / "full.mp4", frames, movflags="faststart").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 3 // 4])
    a, b = both_decoders(cut, fps=2.0)
    assert a.decoder == b.decoder == "pyav" and 0 < a.num_frames == b.num_frames < 20
    assert a.warnings[0].startswith(f"{cut}: decord could not read") and b.warnings[0].startswith(f"{cut}: pyav")
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.flow_windows, b.flow_windows)


def test_decoder_choice_env_and_errors(counter_video, monkeypatch):
    monkeypatch.setenv(video.DECODER_ENV, "pyav")
    assert video.choose_decoder() == "pyav" and decode_clip(str(counter_video)).decoder == "pyav"
    if video.decord is not None:
        assert video.choose_decoder("decord") == "decord"  # a parameter wins over the variable
    monkeypatch.setenv(video.DECODER_ENV, "ffmpeg")
    with pytest.raises(video.DecoderError, match=r"ASRN_DECODER='ffmpeg': expected one of decord, pyav"):
        decode_clip(str(counter_video))
    monkeypatch.delenv(video.DECODER_ENV)
    assert video.choose_decoder() == video.DECODER
    monkeypatch.setattr(video, "decord", None)  # as on macOS or aarch64 Linux
    with pytest.raises(video.DecoderError, match="decord does not import here"):
        decode_clip(str(counter_video), decoder="decord")


BLOCK_DECORD = """
import importlib.abc, sys
class NoDecord(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "decord" or name.startswith("decord."):
            raise ImportError("no decord wheel for this platform")
sys.meta_path.insert(0, NoDecord())
from asrn import video
clip = video.decode_clip(sys.argv[1], fps=2.0)
print(video.DECODER, clip.decoder, "x".join(map(str, clip.frames.shape)))
"""


def test_without_decord_pyav_decodes(counter_video):
    """A process where decord cannot be imported (macOS, aarch64 Linux) decodes with PyAV by default."""
    done = subprocess.run([sys.executable, "-c", BLOCK_DECORD, str(counter_video)], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1], timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["pyav", "pyav", "6x120x160x3"]
