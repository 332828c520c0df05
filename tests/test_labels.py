import numpy as np
import pytest

from asrn import labels


def test_sixteen_qualified_classes_with_sriv_counts():
    assert len(labels.ALL_LABELS) == 16
    assert labels.SRIV_COUNTS["sub:friendly"] == 2221
    assert labels.SRIV_COUNTS["obj:friendly"] == 1073
    assert sum(labels.SUB_COUNTS.values()) == 8931


@pytest.mark.parametrize("task,n", [("sub", 8), ("obj", 8), ("all", 16)])
def test_task_selection(task, n):
    names = labels.task_labels(task)
    assert len(names) == n
    if task != "all":
        assert all(name.startswith(task + ":") for name in names)


def test_encode_decode_round_trip_and_other_group_ignored():
    target = labels.encode(["sub:warm", "obj:peer"], "sub")
    assert target.dtype == np.float32 and target.sum() == 1
    assert labels.decode(target, "sub") == ["sub:warm"]
    both = labels.encode(["sub:warm", "obj:peer"], "all")
    assert labels.decode(both, "all") == ["sub:warm", "obj:peer"]


def test_unknown_label_is_named():
    with pytest.raises(labels.UnknownLabelError, match="'sub:angry'"):
        labels.encode(["sub:angry"], "sub")
    with pytest.raises(labels.UnknownLabelError, match="sub:friendly or obj:friendly"):
        labels.parse_labels("friendly")


def test_unknown_task_and_bad_width():
    with pytest.raises(labels.UnknownTaskError, match="'family'"):
        labels.task_labels("family")
    with pytest.raises(ValueError, match="expected 8"):
        labels.decode(np.zeros(3), "obj")
