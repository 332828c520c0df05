"""benchmarks/sriv_scale.py: its SRIV-scale store builder at a tiny size (shapes, lengths, splits)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from asrn.store import MODALITIES, load_videos, read_info

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "sriv_scale.py"


@pytest.fixture(scope="module")
def sriv_scale():
    spec = importlib.util.spec_from_file_location("sriv_scale", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lengths_total_the_hours(sriv_scale):
    lengths = sriv_scale.sriv_lengths(3124, 25.0)
    assert lengths.shape == (3124,)
    assert lengths.sum() == pytest.approx(25 * 3600)
    assert 20 < np.median(lengths) < 29 < lengths.mean() + 1  # lognormal: median below the mean


def test_paper_dims(sriv_scale):
    assert sriv_scale.paper_dims() == {"rgb": 2048, "motion": 2048, "body": 4096, "face": 128}


def test_tiny_store_has_the_shape_asked(sriv_scale, tmp_path):
    dims = {"rgb": 8, "motion": 8, "body": 16, "face": 4}
    store = sriv_scale.synthesize_sriv_store(tmp_path / "store", num_videos=20, hours=0.1, fps=2.0, dims=dims,
                                             videos_per_part=6)
    videos = load_videos(store)
    lengths = sriv_scale.sriv_lengths(20, 0.1)
    assert len(videos) == 20 and len(list(store.glob("part-*.parquet"))) == 4
    assert read_info(store).dims == dims and read_info(store).fps == 2.0
    for v in videos:
        i = int(v.video_id.split("-")[1])
        assert v.num_steps == max(1, round(lengths[i] * 2.0))
        for m in MODALITIES:
            assert v.features[m].shape == (v.num_steps, dims[m])
    assert sorted(v.split for v in videos).count("train") == 14
    shape = sriv_scale.store_shape(store)
    assert shape["videos"] == 20 and shape["steps"] == sum(v.num_steps for v in videos)
    assert shape["kept_steps_window3"] == sum(-(-v.num_steps // 3) for v in videos)
