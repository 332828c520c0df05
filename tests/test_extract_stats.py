"""asrn.extract: a resumed extract that moves videos between splits rewrites the cached input statistics."""

from __future__ import annotations

import numpy as np

from asrn import store
from asrn.extract import _update_changed_videos
from asrn.manifest import ManifestEntry
from asrn.synth_features import synthesize_feature_store


def test_a_manifest_that_moves_a_train_video_refreshes_the_cached_statistics(tmp_path, capsys):
    out = synthesize_feature_store(tmp_path / "s", num_videos=12, seed=2)
    stored = store.stored_splits_labels(out)
    moved = next(v for v, (split, _) in sorted(stored.items()) if split == "train")
    entries = [ManifestEntry(v, f"/videos/{v}.mp4", "val" if v == moved else split, tuple(labels), None, i + 2)
               for i, (v, (split, labels)) in enumerate(sorted(stored.items()))]
    before = store.read_info(out).extra[store.INPUT_STATS_KEY]
    _update_changed_videos(out, entries)
    assert f"{moved}: split/labels changed" in capsys.readouterr().err
    after = store.read_info(out).extra[store.INPUT_STATS_KEY]
    assert after["num_videos"] == before["num_videos"] - 1
    cached = store.cached_input_statistics(out)
    fresh = store.feature_statistics(out, "train")
    assert cached is not None and all(np.array_equal(cached[m][0], fresh[m][0]) for m in fresh)
