import json

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    jaccard_score,
    precision_recall_fscore_support,
)

from asrn.metrics import (
    ACC_EMPTY_SAMPLE,
    RANKING_TABLE_COLUMNS,
    average_precision,
    choose_thresholds,
    compute_metrics,
    format_table,
    group_metrics,
)


def _names(c: int) -> list[str]:
    return [f"c{i}" for i in range(c)]


def _sklearn_ap(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """sklearn's per-class AP, NaN where a class has no positive (sklearn itself warns and says 0 there)."""
    return np.array([average_precision_score(targets[:, j], scores[:, j]) if targets[:, j].any() else np.nan
                     for j in range(targets.shape[1])])


def _assert_matches_sklearn(targets: np.ndarray, scores: np.ndarray, threshold: float | np.ndarray = 0.5) -> dict:
    got = compute_metrics(targets, scores, _names(targets.shape[1]), threshold)
    pred = (scores >= threshold).astype(int)  # a (C,) threshold broadcasts over the rows
    assert got["f1_micro"] == pytest.approx(f1_score(targets, pred, average="micro", zero_division=0))
    assert got["f1_macro"] == pytest.approx(f1_score(targets, pred, average="macro", zero_division=0))
    assert got["acc"] == pytest.approx(jaccard_score(targets, pred, average="samples",
                                                     zero_division=ACC_EMPTY_SAMPLE))
    assert got["subacc"] == pytest.approx(accuracy_score(targets, pred))
    precision, recall, f1, support = precision_recall_fscore_support(targets, pred, average=None, zero_division=0)
    for i, name in enumerate(_names(targets.shape[1])):
        row = got["per_class"][name]
        assert row["precision"] == pytest.approx(precision[i])
        assert row["recall"] == pytest.approx(recall[i])
        assert row["f1"] == pytest.approx(f1[i])
        assert row["support"] == support[i]
        assert row["accuracy"] == pytest.approx(accuracy_score(targets[:, i], pred[:, i]))
        assert row["threshold"] == pytest.approx(np.broadcast_to(threshold, targets.shape[1])[i])
    ap = _sklearn_ap(targets, scores)
    has = ~np.isnan(ap)
    for i, name in enumerate(_names(targets.shape[1])):
        assert got["per_class"][name]["ap"] == (pytest.approx(ap[i]) if has[i] else None)
    assert got["map_classes"] == has.sum()
    assert got["map"] == (pytest.approx(ap[has].mean()) if has.any() else 0.0)
    assert got["num_samples"] == targets.shape[0]
    json.dumps(got, allow_nan=False)  # plain Python numbers only, strict JSON
    return got


@pytest.mark.parametrize(("n", "c", "density", "threshold", "seed"), [
    (50, 8, 0.2, 0.5, 0), (7, 16, 0.1, 0.3, 1), (200, 3, 0.6, 0.7, 2), (13, 8, 0.05, 0.5, 3), (31, 2, 0.5, 0.5, 4),
])
def test_equals_sklearn_on_random_inputs(n, c, density, threshold, seed):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < density).astype(int)
    scores = np.clip(0.6 * targets + 0.7 * rng.random((n, c)) - 0.2, 0, 1)
    _assert_matches_sklearn(targets, scores, threshold)


def test_no_positive_predictions():
    targets = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0]])
    got = _assert_matches_sklearn(targets, np.full(targets.shape, 0.1))
    assert got["f1_micro"] == 0.0 and got["acc"] == 0.0 and got["subacc"] == 0.0


def test_class_absent_from_truth():
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    scores = np.array([[0.9, 0.2, 0.6], [0.1, 0.8, 0.1], [0.7, 0.4, 0.2]])
    got = _assert_matches_sklearn(targets, scores)
    assert got["per_class"]["c2"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 2 / 3, "support": 0,
                                      "threshold": 0.5, "ap": None}
    assert got["map_classes"] == 2 and got["map"] == pytest.approx(1.0)


def test_all_correct():
    targets = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 1]])
    got = _assert_matches_sklearn(targets, targets * 0.9 + 0.05)
    assert got["f1_micro"] == got["f1_macro"] == got["acc"] == got["subacc"] == 1.0


def test_single_sample():
    _assert_matches_sklearn(np.array([[0, 1, 1, 0]]), np.array([[0.2, 0.9, 0.4, 0.6]]))


def test_empty_truth_and_empty_prediction_is_a_match():
    targets = np.array([[0, 0, 0], [1, 0, 0], [0, 0, 0]])
    scores = np.array([[0.1, 0.2, 0.3], [0.9, 0.6, 0.1], [0.1, 0.7, 0.1]])
    got = _assert_matches_sklearn(targets, scores)
    assert got["acc"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert got["subacc"] == pytest.approx(1 / 3)


def test_threshold_is_inclusive():
    got = compute_metrics(np.array([[1, 0]]), np.array([[0.5, 0.49]]), ["a", "b"])
    assert got["subacc"] == 1.0


@pytest.mark.parametrize(("targets", "scores", "names", "message"), [
    (np.ones((2, 3)), np.ones((2, 2)), _names(3), "scores shape"),
    (np.ones(3), np.ones(3), _names(3), "2-D"),
    (np.ones((2, 3)), np.ones((2, 3)), _names(2), "2 class names for 3"),
    (np.array([[0, 2]]), np.ones((1, 2)), _names(2), "0/1 multi-hot.*2"),
    (np.array([[0, 0.5]]), np.ones((1, 2)), _names(2), "0/1 multi-hot"),
    (np.zeros((0, 2)), np.zeros((0, 2)), _names(2), "no samples"),
    (np.ones((1, 2)), np.ones((1, 2)), ["a", "a"], "repeat"),
])
def test_bad_inputs_named(targets, scores, names, message):
    with pytest.raises(ValueError, match=message):
        compute_metrics(targets, scores, names)


def test_group_metrics_and_table_layout():
    from asrn.labels import task_labels

    rng = np.random.default_rng(3)
    names = task_labels("all")
    y = (rng.random((30, 16)) < 0.3).astype(int)
    s = rng.random((30, 16))
    sub = group_metrics(y, s, names, "sub")
    assert sub == compute_metrics(y[:, :8], s[:, :8], names[:8])
    assert group_metrics(y, s, names, "obj")["per_class"].keys() == set(names[8:])
    table = format_table("Table 2", {"ASRN": sub, "mean": group_metrics(y, s, names, "obj")})
    lines = table.splitlines()
    assert lines[1].split() == ["Methods", "F1", "mi", "F1", "ma", "Acc", "Subacc"]
    assert lines[2].split()[1:] == [f"{sub[k]:.4f}" for k in ("f1_micro", "f1_macro", "acc", "subacc")]
    with pytest.raises(ValueError, match="no sub:"):
        group_metrics(y[:, 8:], s[:, 8:], names[8:], "sub")


def _random_with_ties(n: int, c: int, density: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Targets with some all-zero columns, and scores on a coarse grid (many ties) that rank positives higher."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < density).astype(int)
    targets[:, ::3] = 0 if c > 3 else targets[:, ::3]  # classes without positives
    scores = np.round(np.clip(0.3 * targets + rng.random((n, c)) * 0.8, 0, 1), 1)  # 11 levels: ties
    return targets, scores


@pytest.mark.parametrize(("n", "c", "density", "seed"), [(60, 7, 0.3, 0), (9, 5, 0.4, 1), (300, 4, 0.1, 2),
                                                         (25, 3, 0.9, 3)])
def test_average_precision_equals_sklearn_with_ties(n, c, density, seed):
    targets, scores = _random_with_ties(n, c, density, seed)
    assert any(len(np.unique(scores[:, j])) < n for j in range(c))  # the case under test: tied scores
    ap = average_precision(targets, scores)
    expected = _sklearn_ap(targets, scores)
    np.testing.assert_allclose(ap, expected, rtol=1e-12, atol=1e-12, equal_nan=True)
    assert np.isnan(ap).tolist() == (~targets.any(axis=0)).tolist()


def test_average_precision_takes_a_tie_as_one_block():
    # broken by order the positive would rank first (AP 1); tied, both enter at once: P = 1/2 at R = 1
    assert average_precision(np.array([[1], [0]]), np.array([[0.5], [0.5]]))[0] == 0.5
    assert average_precision(np.array([[0], [1]]), np.array([[0.5], [0.5]]))[0] == 0.5
    # y = 1 0 1 ranked by distinct scores: P = 1 at R = 1/2, P = 2/3 at R = 1
    assert average_precision(np.array([[1], [0], [1]]), np.array([[0.9], [0.8], [0.1]]))[0] == pytest.approx(5 / 6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compute_metrics_at_per_class_thresholds_equals_sklearn(seed):
    targets, scores = _random_with_ties(80, 7, 0.3, seed)
    thresholds = np.random.default_rng(seed).choice([0.05, 0.2, 0.35, 0.5, 0.6, 0.9], size=7)
    got = _assert_matches_sklearn(targets, scores, thresholds)
    assert [got["per_class"][name]["threshold"] for name in _names(7)] == thresholds.tolist()


def test_no_positive_anywhere_is_strict_json():
    targets = np.zeros((4, 3), dtype=int)
    got = _assert_matches_sklearn(targets, np.random.default_rng(0).random((4, 3)))
    assert got["map"] == 0.0 and got["map_classes"] == 0
    assert all(row["ap"] is None for row in got["per_class"].values())
    assert json.loads(json.dumps(got, allow_nan=False)) == got


@pytest.mark.parametrize(("thresholds", "message"), [
    (np.full(4, 0.5), r"\(3,\) array.*\(4,\)"), (np.full((1, 3), 0.5), r"shape \(1, 3\)"),
    (np.array([0.5, np.nan, 0.5]), "finite"), (np.inf, "finite"),
])
def test_bad_thresholds_named(thresholds, message):
    with pytest.raises(ValueError, match=message):
        compute_metrics(np.ones((2, 3)), np.ones((2, 3)), _names(3), thresholds)


def _brute_force_best_f1(y: np.ndarray, s: np.ndarray, candidates: np.ndarray) -> float:
    return max(f1_score(y, (s >= t).astype(int), zero_division=0) for t in candidates)


@pytest.mark.parametrize(("n", "c", "density", "seed"), [(40, 6, 0.3, 0), (15, 4, 0.5, 1), (120, 5, 0.1, 2),
                                                         (30, 4, 0.9, 3)])
def test_choose_thresholds_maximises_each_class_f1(n, c, density, seed):
    targets, scores = _random_with_ties(n, c, density, seed)
    scores = scores + np.random.default_rng(seed).random(scores.shape) * 0.01 * (seed % 2)  # ties, or few ties
    thresholds = choose_thresholds(targets, scores)
    assert thresholds.shape == (c,)
    assert np.array_equal(thresholds, choose_thresholds(targets, scores))  # deterministic
    for j in range(c):
        y, s = targets[:, j], scores[:, j]
        if not y.any():
            assert thresholds[j] == 0.5
            continue
        every_prediction = np.r_[np.unique(s), np.inf]  # each achievable prediction set, by brute force
        best = _brute_force_best_f1(y, s, every_prediction)
        assert f1_score(y, (s >= thresholds[j]).astype(int)) == pytest.approx(best, abs=1e-12), j
        assert best >= f1_score(y, (s >= 0.5).astype(int), zero_division=0)


def test_choose_thresholds_on_a_grid_maximises_over_the_grid():
    targets, scores = _random_with_ties(50, 4, 0.4, 5)
    scores = scores + np.random.default_rng(5).random(scores.shape) * 0.05
    grid = np.linspace(0.05, 0.95, 19)
    thresholds = choose_thresholds(targets, scores, grid=grid)
    for j in np.flatnonzero(targets.any(axis=0)):
        assert thresholds[j] in grid
        best = _brute_force_best_f1(targets[:, j], scores[:, j], grid)
        assert f1_score(targets[:, j], (scores[:, j] >= thresholds[j]).astype(int)) == pytest.approx(best, abs=1e-12)
    with pytest.raises(ValueError, match="grid"):
        choose_thresholds(targets, scores, grid=[[0.5]])


def test_choose_thresholds_ties_go_nearest_half_then_higher():
    y = np.array([[1], [0], [0], [1]])
    # candidates 0.1 (all: F1 2/3), 0.2, 0.45, 0.75 (top one: F1 2/3): 0.75 is nearer 0.5
    assert choose_thresholds(y, np.array([[0.1], [0.3], [0.6], [0.9]]))[0] == 0.75
    # candidates 0.25 (all: F1 2/3) and 0.75 (top one: F1 2/3) are equally near 0.5: the higher
    assert choose_thresholds(y, np.array([[0.25], [0.3], [0.625], [0.875]]))[0] == 0.75


def test_choose_thresholds_can_predict_every_sample():
    # F1 4/5 predicting all three beats 1/2 (threshold 0.15) and 2/3 (threshold 0.25): the lowest score
    assert choose_thresholds(np.array([[1], [0], [1]]), np.array([[0.1], [0.2], [0.3]]))[0] == 0.1


def test_choose_thresholds_beats_half_on_a_miscalibrated_model():
    """A model that ranks well but scores everything below 0.5: F1 0 at 0.5, near 1 at val-tuned thresholds."""
    rng = np.random.default_rng(7)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        targets = (rng.random((n, 5)) < 0.3).astype(int)
        return targets, 0.1 + 0.2 * targets + 0.15 * rng.random((n, 5))  # all < 0.5; positives above 0.3

    (val_y, val_s), (test_y, test_s) = split(200), split(200)
    thresholds = choose_thresholds(val_y, val_s)
    assert ((thresholds > 0.25) & (thresholds <= 0.3)).all()  # between the negatives' top and positives' bottom
    names = _names(5)
    at_half = compute_metrics(test_y, test_s, names)
    tuned = _assert_matches_sklearn(test_y, test_s, thresholds)
    assert at_half["f1_macro"] == 0.0
    assert tuned["f1_macro"] == 1.0
    assert tuned["map"] == at_half["map"] == 1.0  # threshold-free


def test_choose_thresholds_rejects_infinite_scores():
    with pytest.raises(ValueError, match="finite"):
        choose_thresholds(np.array([[1], [0]]), np.array([[np.inf], [0.2]]))


def test_group_metrics_takes_thresholds_of_the_wider_prediction():
    rng = np.random.default_rng(4)
    names = [f"sub:{i}" for i in range(3)] + [f"obj:{i}" for i in range(2)]
    y = (rng.random((30, 5)) < 0.4).astype(int)
    s = rng.random((30, 5))
    t = np.array([0.1, 0.2, 0.3, 0.4, 0.6])
    assert group_metrics(y, s, names, "obj", t) == compute_metrics(y[:, 3:], s[:, 3:], names[3:], t[3:])
    with pytest.raises(ValueError, match=r"\(5,\) array"):
        group_metrics(y, s, names, "obj", t[3:])


def test_table_with_ranking_columns():
    row = {"f1_micro": 0.1, "f1_macro": 0.2, "acc": 0.3, "subacc": 0.4, "map": 0.5, "f1_macro_val_thr": 0.6}
    lines = format_table("Table 2", {"ASRN": row, "none": {**row, "f1_macro_val_thr": None}},
                         columns=RANKING_TABLE_COLUMNS).splitlines()
    assert lines[1].split() == ["Methods", "F1", "mi", "F1", "ma", "Acc", "Subacc", "mAP", "F1", "ma@val-thr"]
    assert lines[2].split() == ["ASRN", "0.1000", "0.2000", "0.3000", "0.4000", "0.5000", "0.6000"]
    assert lines[3].split()[-1] == "-"
    assert len({len(line) for line in lines[1:]}) == 1  # columns line up
    with pytest.raises(KeyError, match="f1_macro_val_thr"):
        format_table("Table 2", {"ASRN": {k: v for k, v in row.items() if k != "f1_macro_val_thr"}},
                     columns=RANKING_TABLE_COLUMNS)
