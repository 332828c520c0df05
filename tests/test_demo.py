"""`asrn demo`: every stage at a tiny size on the session's Ray cluster, and the committed ablation it shows."""

from __future__ import annotations

import json

import pytest

from asrn.demo import ABLATION_RESULTS, DemoConfig, DemoConfigError, ablation_summary


def test_the_demo_shows_the_committed_ablation_labelled_as_such(tmp_path):
    text = ablation_summary()
    assert "committed results" in text and "not this run" in text
    assert "| ASRN |" in text and "| ASRN(no GLA) |" in text  # the table's rows, from the committed file
    assert "2000" in text.splitlines()[1]  # its command line: the ablation's size
    assert "benchmarks/results/ablation.md" in ablation_summary(tmp_path / "absent.md")


def test_flags_out_of_range_are_refused_by_name():
    with pytest.raises(DemoConfigError, match="--num-videos"):
        DemoConfig(num_videos=5)
    with pytest.raises(DemoConfigError, match="--sweep-epochs"):
        DemoConfig(sweep_epochs=0)


@pytest.mark.ray
def test_the_demo_runs_every_stage_and_leaves_a_prediction_to_look_at(ray_cluster, tmp_path, capsys):
    from mlflow import MlflowClient

    from asrn.demo import run_demo

    done = run_demo(DemoConfig(out=tmp_path / "demo", num_videos=20, epochs=2, sweep_samples=2, sweep_epochs=1))
    printed = capsys.readouterr().out
    out = tmp_path / "demo"
    assert (out / "train" / "best.pt").is_file() and (out / "sweep" / "trials.csv").is_file()
    assert (out / "predict" / "attention.png").stat().st_size > 1000
    scores = json.loads((out / "predict" / "scores.json").read_text())
    assert scores["true_labels"] == done["prediction"].true_labels and scores["true_labels"]
    assert f"true labels: {', '.join(scores['true_labels'])}" in printed
    assert str(out / "predict" / "attention.png") in printed and "top " in printed
    assert f"mlflow ui --backend-store-uri {done['tracking_uri']}" in printed
    assert "committed results" in printed and ABLATION_RESULTS.name in printed
    client = MlflowClient(done["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("asrn-demo").experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == done["sweep"].mlflow_run_id]
    assert len(children) == 2 and len(runs) == 4  # the train run, the sweep's parent and its two trials
