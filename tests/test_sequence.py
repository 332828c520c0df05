import numpy as np
import pytest
import torch

from asrn.labels import task_labels
from asrn.sequence import Batch, collate, kept_shot_starts, select_steps
from asrn.store import MODALITIES, VideoFeatures

DIMS = {"rgb": 4, "motion": 3, "body": 2, "face": 2}


def _present(body, face):
    body, face = np.array(body, bool), np.array(face, bool)
    ones = np.ones(body.size, bool)
    return {"rgb": ones, "motion": ones, "body": body, "face": face}


def _video(video_id, t, labels=("sub:warm", "obj:peer"), has_face=None, dims=DIMS):
    """Every feature value is the step index, so a padded batch shows which steps were kept."""
    step = np.arange(t, dtype=np.float32)[:, None]
    has_face = np.ones(t, bool) if has_face is None else np.asarray(has_face, bool)
    return VideoFeatures(video_id, "train", list(labels), step[:, 0] / 2,
                         {m: np.repeat(step, d, axis=1) + 1 for m, d in dims.items()}, np.ones(t, bool), has_face)


def test_select_steps_keeps_the_all_present_step_of_each_window():
    present = _present(body=[1, 1, 1, 1, 1, 1, 1, 1, 1, 1], face=[1, 0, 0, 0, 0, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(select_steps(present), [0, 5, 7, 9])


def test_select_steps_without_all_present_takes_the_most_then_the_middle_then_the_earliest():
    present = _present(body=[0, 1, 0, 1, 1, 1, 0, 0, 0, 1, 1],
                       face=[0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1])
    # windows [0..2]: most at 1; [3..5]: tie -> middle 4; [6..8]: tie -> middle 7; [9, 10] (short): tie -> earliest 9
    np.testing.assert_array_equal(select_steps(present), [1, 4, 7, 9])
    all_present = _present(body=[1] * 6, face=[1, 1, 1, 1, 0, 1])
    np.testing.assert_array_equal(select_steps(all_present), [1, 3])  # several all-present: middle, else earliest


def test_the_random_former_breaks_ties_at_random_and_still_keeps_the_most_complete_step():
    present = _present(body=[0, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1], face=[0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 1])
    # windows: [0..2] one best step (1); [3..5] two all-present (4, 5); [6..8] three; [9, 10] one all-present (10)
    draws = np.array([select_steps(present, rng=np.random.default_rng(seed)) for seed in range(60)])  # (60, 4)
    assert (draws[:, 0] == 1).all() and (draws[:, 3] == 10).all()  # a unique best step is always kept
    assert set(draws[:, 1]) == {4, 5} and set(draws[:, 2]) == {6, 7, 8}  # every tied step is drawn
    np.testing.assert_array_equal(select_steps(present, rng=np.random.default_rng(7)),
                                  select_steps(present, rng=np.random.default_rng(7)))  # reproducible by seed


def test_select_steps_window_one_keeps_everything_and_bad_inputs_raise():
    present = _present(body=[0, 1, 0, 1], face=[0, 0, 1, 1])
    np.testing.assert_array_equal(select_steps(present, window=1), [0, 1, 2, 3])
    np.testing.assert_array_equal(select_steps(present, window=2), [1, 3])
    assert select_steps(_present([], []), window=3).size == 0
    with pytest.raises(ValueError, match="window"):
        select_steps(present, window=0)
    with pytest.raises(ValueError, match="one length"):
        select_steps({"rgb": np.ones(3, bool), "face": np.ones(4, bool)})


def test_collate_pads_masks_and_keeps_the_selected_steps():
    videos = [_video("a", 7, has_face=[0, 0, 1, 1, 0, 0, 0]), _video("b", 3), _video("c", 5)]
    batch = collate(videos, "all")
    assert isinstance(batch, Batch) and batch.video_ids == ["a", "b", "c"]
    np.testing.assert_array_equal(batch.steps[0], [2, 3, 6])
    np.testing.assert_array_equal(batch.steps[1], [1])
    np.testing.assert_array_equal(batch.steps[2], [1, 3])  # short last window: its earlier middle
    assert batch.mask.tolist() == [[True, True, True], [True, False, False], [True, True, False]]
    for m in MODALITIES:
        assert batch.features[m].shape == (3, 3, DIMS[m]) and batch.features[m].dtype == torch.float32
        assert batch.present[m].dtype == torch.bool
        assert not batch.present[m][~batch.mask].any()
    assert batch.features["rgb"][:, :, 0].tolist() == [[3, 4, 7], [2, 0, 0], [2, 4, 0]]  # step + 1, zero padding
    assert batch.present["face"].tolist() == [[True, True, False], [True, False, False], [True, True, False]]
    assert batch.present["rgb"].tolist() == batch.mask.tolist()


@pytest.mark.parametrize("task", ["sub", "obj", "all"])
def test_collate_encodes_targets_for_the_task(task):
    batch = collate([_video("a", 4, labels=["sub:warm", "obj:peer"]), _video("b", 2, labels=["obj:hostile"])], task)
    classes = task_labels(task)
    assert batch.targets.shape == (2, len(classes)) and batch.targets.dtype == torch.float32
    expected = [[c in ("sub:warm", "obj:peer") for c in classes], [c == "obj:hostile" for c in classes]]
    assert batch.targets.bool().tolist() == expected


def test_collate_window_one_keeps_all_and_max_steps_spreads_evenly():
    videos = [_video("a", 10), _video("b", 4)]
    batch = collate(videos, "sub", window=1)
    assert batch.mask.sum(1).tolist() == [10, 4]
    np.testing.assert_array_equal(batch.steps[0], np.arange(10))
    capped = collate(videos, "sub", window=1, max_steps=4)
    np.testing.assert_array_equal(capped.steps[0], [0, 3, 6, 9])
    np.testing.assert_array_equal(capped.steps[1], [0, 1, 2, 3])
    assert capped.features["motion"].shape == (2, 4, DIMS["motion"])


def test_collate_rejects_bad_batches_naming_the_culprit():
    with pytest.raises(ValueError, match="modality 'face'"):
        collate([_video("a", 3), _video("b", 3, dims={**DIMS, "face": 5})], "sub")
    with pytest.raises(ValueError, match="'empty'"):
        collate([_video("a", 3), _video("empty", 0)], "sub")
    with pytest.raises(ValueError, match="at least one"):
        collate([], "sub")
    with pytest.raises(ValueError, match="task"):
        collate([_video("a", 3)], "both")


def test_batch_to_moves_tensors_and_keeps_bookkeeping():
    batch = collate([_video("a", 3)], "sub").to("cpu")
    assert batch.features["rgb"].device.type == "cpu" and batch.video_ids == ["a"]
    assert len(batch.steps) == 1


def test_a_kept_step_starts_a_shot_when_a_shot_began_since_the_previous_kept_step():
    raw = np.zeros(12, bool)
    raw[[0, 5, 6, 11]] = True  # shots [0-4], [5], [6-10], [11]
    # kept 1, 4, 7, 10: the cuts at 5 and 6 both fall between 4 and 7 (the kept steps' shot changes once); 11 unkept
    assert kept_shot_starts(raw, np.array([1, 4, 7, 10])).tolist() == [True, False, True, False]
    assert kept_shot_starts(raw, np.array([1, 5, 8, 11])).tolist() == [True, True, True, True]
    assert kept_shot_starts(raw, np.arange(12)).tolist() == raw.tolist()


def test_collate_carries_the_shots_and_whether_they_are_known():
    known = _video("a", 9, has_face=[1, 0, 0, 0, 1, 0, 0, 0, 1])  # keeps steps 0, 4, 8
    known.shot_start = np.array([1, 0, 0, 1, 0, 0, 0, 0, 0], bool)  # a cut at step 3: kept step 4 opens a shot
    unknown = _video("b", 6)
    batch = collate([known, unknown], "sub")
    assert batch.shot_known.tolist() == [True, False]
    assert batch.shot_start.tolist() == [[True, True, False], [False, False, False]]
    moved = batch.to("cpu")
    assert moved.inputs()["shot_start"].dtype == torch.bool and moved.shot_known.tolist() == [True, False]
