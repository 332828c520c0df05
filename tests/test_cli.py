"""The CLI error contract: an AsrnError is one line and exit 1; any other exception is a bug with its traceback."""

from __future__ import annotations

import pytest

import asrn.synth_features
from asrn.cli import main
from asrn.errors import AsrnError


def test_user_errors_are_one_line_and_exit_1(tmp_path, capsys):
    assert main(["synth", "features", "--out", str(tmp_path / "s"), "--num-videos", "3"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("asrn synth: error: num_videos = 3")


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("an internal bug, not bad input")

    monkeypatch.setattr(asrn.synth_features, "synthesize_feature_store", broken)
    assert not issubclass(ValueError, AsrnError)
    with pytest.raises(ValueError, match="internal bug"):
        main(["synth", "features", "--out", str(tmp_path / "s"), "--num-videos", "10"])
