import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, jaccard_score, precision_recall_fscore_support

from asrn.metrics import ACC_EMPTY_SAMPLE, compute_metrics


def _names(c: int) -> list[str]:
    return [f"c{i}" for i in range(c)]


def _assert_matches_sklearn(targets: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict:
    got = compute_metrics(targets, scores, _names(targets.shape[1]), threshold)
    pred = (scores >= threshold).astype(int)
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
    assert got["num_samples"] == targets.shape[0]
    json.dumps(got)  # plain Python numbers only
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
    assert got["per_class"]["c2"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 2 / 3, "support": 0}


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
    from asrn.metrics import format_table, group_metrics

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
