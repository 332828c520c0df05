"""asrn.detect's Faster R-CNN: chunked detection keeps its memory bounded whatever the video's length."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from asrn.detect import FasterRCNNDetector, detection_memory, frame_chunks

STATUS = Path("/proc/self/status")


def _peak_rss_growth(run) -> int:
    """Bytes the process's peak resident set (VmHWM) rose above its resident set while `run()` ran: the kernel
    tracks the peak page by page, and writing 5 to clear_refs resets it to the current resident set."""
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kb("VmRSS")
    run()
    return (_status_kb("VmHWM") - before) << 10


def _status_kb(key: str) -> int:
    line = next(x for x in STATUS.read_text().splitlines() if x.startswith(key + ":"))
    return int(line.split()[1])


@pytest.fixture(scope="module")
def detector() -> FasterRCNNDetector:
    """A random-init R50-FPN (the paper's detector) at a small input size: its memory per frame is still mostly the
    1,000 RoI features, which do not depend on the frame size."""
    torch.manual_seed(0)
    model = torchvision.models.get_model("fasterrcnn_resnet50_fpn", weights=None, weights_backbone=None,
                                         min_size=64, max_size=96)
    return FasterRCNNDetector(model, "fasterrcnn_resnet50_fpn", "random-init", device="cpu", chunk_frames=2)


def test_frame_chunks_cover_every_frame_once():
    assert frame_chunks(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert frame_chunks(0, 4) == [] and frame_chunks(4, 4) == [slice(0, 4)]


def test_detection_memory_stays_within_one_chunk_on_a_long_video(detector):
    """A video 12 times the chunk's length peaks at about one chunk's memory, and within what the task declares;
    without chunks the peak grows with the frames (about 25 MB each here, mostly RoI features)."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (24, 64, 96, 3), dtype=np.uint8)  # (T, H, W, 3)
    detector.persons(frames[:2])  # warm-up: lazy allocations of the first pass are not the chunk's
    one_chunk = _peak_rss_growth(lambda: detector.persons(frames[:2]))
    long_video = _peak_rss_growth(lambda: detector.persons(frames))
    unchunked = FasterRCNNDetector(detector.model, "fasterrcnn_resnet50_fpn", "random-init", device="cpu",
                                   chunk_frames=8)
    eight_frames = _peak_rss_growth(lambda: unchunked.persons(frames[:8]))
    print(f"peak RSS growth: 2 frames {one_chunk >> 20} MB, 24 frames in chunks of 2 {long_video >> 20} MB, "
          f"8 frames at once {eight_frames >> 20} MB")
    assert eight_frames > 2.5 * one_chunk, (eight_frames, one_chunk)  # the measure sees memory grow with frames
    # 12 chunks cost about one (allocator slack aside), well under what 4 frames at once cost
    assert long_video < min(2 * one_chunk + (32 << 20), eight_frames / 2), (long_video, one_chunk, eight_frames)
    assert long_video < detection_memory(detector.chunk_frames)
    assert detector.describe()["device"] == "cpu" and detector.describe()["chunk_frames"] == 2


def test_prepare_tasks_declare_memory_and_a_gpu_share_for_faster_rcnn(offline, tmp_path):
    """Ray resources of the prepare task (asrn.extract; importing it starts no Ray): detection memory only with a
    Faster R-CNN, a GPU share only on a GPU run whose encoder actors leave one, and never the encoders' memory
    (equal remote args would fuse the two stages)."""
    from asrn.extract import DETECT_GPUS, ENCODER_MEMORY, PREPARE_MEMORY, ExtractConfig, prepare_resources

    config = ExtractConfig(tmp_path / "m.csv", tmp_path / "out", weights_dir=offline, gpus_per_worker=1.0)
    assert prepare_resources(config, 4.0) == {"num_cpus": 1, "memory": PREPARE_MEMORY}  # no weights: OpenCV
    (offline / "fasterrcnn_mobilenet_v3_large_fpn.pth").write_bytes(b"located, never loaded here")
    on_cpu = prepare_resources(ExtractConfig(tmp_path / "m.csv", tmp_path / "out", weights_dir=offline), 4.0)
    assert on_cpu == {"num_cpus": 1, "memory": PREPARE_MEMORY + detection_memory(4)}
    assert prepare_resources(config, 1.0) == on_cpu  # the one GPU is the encoder actor's
    assert prepare_resources(config, 2.0) == {"num_cpus": 1, "num_gpus": DETECT_GPUS, "memory": PREPARE_MEMORY}
    assert PREPARE_MEMORY not in ENCODER_MEMORY.values()
    assert on_cpu["memory"] not in ENCODER_MEMORY.values()
