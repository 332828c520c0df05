import json

import numpy as np
import pytest

from asrn.manifest import read_manifest
from asrn.shots import ShotSettings, detect_shot_starts, histogram_distances, steps_after_cuts
from asrn.synth_videos import synthesize_videos, write_photo_clip
from asrn.video import decode_clip

FPS = 2.0  # extraction's default sampling rate


def _sampled(path):
    return decode_clip(str(path), fps=FPS, flow_pairs=0, flow_side=8)


def test_steps_after_cuts_marks_the_first_sampled_step_of_each_shot():
    frames = np.array([2, 7, 12, 17, 22])
    assert steps_after_cuts(frames, [5, 17]).tolist() == [True, True, False, True, False]
    assert steps_after_cuts(frames, [8, 9]).tolist() == [True, False, True, False, False]  # two cuts, one step
    assert steps_after_cuts(frames, []).tolist() == [True, False, False, False, False]


def test_cuts_between_real_photographs_are_found_within_one_sampled_step(tmp_path):
    cuts = write_photo_clip(tmp_path / "multi.mp4", [13, 17, 11, 19, 15])
    clip = _sampled(tmp_path / "multi.mp4")
    found = np.flatnonzero(detect_shot_starts(clip.frames))
    truth = np.flatnonzero(steps_after_cuts(clip.frame_indices, cuts))
    assert len(cuts) == 4 and found[0] == 0 and len(found) == len(truth) == len(cuts) + 1
    assert np.abs(found - truth).max() <= 1
    distances = histogram_distances(clip.frames)
    assert distances[truth[1:]].min() > 2 * np.delete(distances, truth).max()  # a clear margin, not a lucky one


def test_a_slowly_panning_shot_and_a_static_shot_have_no_cut(tmp_path, astronaut_clip):
    assert write_photo_clip(tmp_path / "pan.mp4", [50]) == []
    static = astronaut_clip(tmp_path / "static.mp4", 160, 160)  # the same photograph, jittered by a few pixels
    for path in (tmp_path / "pan.mp4", static):
        clip = _sampled(path)
        starts = detect_shot_starts(clip.frames)
        assert clip.frames.shape[0] >= 4 and starts.tolist() == [True] + [False] * (starts.size - 1), path


def test_the_cuts_of_synthetic_videos_are_found_at_their_sampled_steps(tmp_path):
    entries = read_manifest(synthesize_videos(tmp_path, num_videos=6, seed=4, seconds=4.0))
    for e in entries:
        meta = json.loads((tmp_path / "meta" / f"{e.video_id}.json").read_text())
        assert meta["cut_frames"] == [s["start"] for s in meta["shots"][1:]]
        clip = _sampled(e.path)
        assert detect_shot_starts(clip.frames).tolist() == steps_after_cuts(clip.frame_indices,
                                                                             meta["cut_frames"]).tolist()


def test_settings_are_recorded_and_the_threshold_decides():
    described = ShotSettings().describe()
    assert json.loads(json.dumps(described)) == described and described["detector"] == "hsv-histogram"
    rng = np.random.default_rng(0)
    red, blue = np.zeros((2, 40, 60, 3), np.uint8), np.zeros((2, 40, 60, 3), np.uint8)
    red[..., 0], blue[..., 2] = 200, 200
    frames = np.concatenate([red, blue]) + rng.integers(0, 20, (4, 40, 60, 3)).astype(np.uint8)
    assert detect_shot_starts(frames).tolist() == [True, False, True, False]
    assert detect_shot_starts(frames, ShotSettings(threshold=1.0)).tolist() == [True, False, False, False]
    assert detect_shot_starts(frames[:0]).shape == (0,)


@pytest.mark.parametrize("shots", [[0], [3, 0]])
def test_photo_clip_refuses_empty_shots(tmp_path, shots):
    from asrn.synth_features import SyntheticDataError

    with pytest.raises(SyntheticDataError, match="one positive length per photograph"):
        write_photo_clip(tmp_path / "bad.mp4", shots)


def test_extraction_stores_the_cuts_per_step(tmp_path):
    """prepare_video (extract's CPU stage, without Ray) finds the cuts; the store row carries them through Parquet."""
    from asrn.features import VideoSettings, prepare_video, to_video_features
    from asrn.store import MODALITIES, table_to_videos, videos_to_table

    (entry,) = read_manifest(synthesize_videos(tmp_path, num_videos=6, seed=5, seconds=4.0))[:1]
    meta = json.loads((tmp_path / "meta" / f"{entry.video_id}.json").read_text())
    prepared = prepare_video(entry.path, entry.boxes, VideoSettings(preset="lite", fps=FPS))
    truth = steps_after_cuts(prepared.frame_indices, meta["cut_frames"])
    assert truth.sum() >= 3 and prepared.shot_start.tolist() == truth.tolist()
    zeros = {m: np.zeros((prepared.num_steps, 2), np.float32) for m in MODALITIES}
    (row,) = table_to_videos(videos_to_table([to_video_features(prepared, zeros, entry.video_id, "train", [])]))
    assert row.shot_start.tolist() == truth.tolist()
