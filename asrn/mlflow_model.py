"""The best model of a run as MLflow users load it (`mlflow.pytorch.load_model`): ASRN behind one tensor input.

The logged model (`ScoringModel`) takes one float32 tensor (B, T, F) of store rows, as `asrn extract` writes them
(before the sequence former), laid out by `pack_videos`: per step the rgb, motion, body and face features, then
body_present, face_present, shot_start (1 where a shot begins; a video whose first step has 0 has unknown shots)
and valid (1 on a video's steps, 0 on the padding after them); it returns the (B, C) class probabilities that
`asrn predict` and `asrn train` compute from best.pt.
"""

from __future__ import annotations

import os
import platform
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from asrn.locations import Location

MODEL_NAME = "model"  # the logged model's name in its run (mlflow.pytorch.log_model(name=...))
PACKED_FLAGS = ("body_present", "face_present", "shot_start", "valid")  # the last columns of a packed input
EXAMPLE_STEPS = 6  # steps of the input example logged with the model (two windows of the sequence former)


def packed_width(dims: dict[str, int]) -> int:
    """F of a packed input: the modalities' widths plus PACKED_FLAGS."""
    return sum(dims.values()) + len(PACKED_FLAGS)


def pack_videos(videos: Sequence, dims: dict[str, int], max_steps: int | None = None) -> np.ndarray:
    """(B, T, F) float32 input of `ScoringModel` from store videos (asrn.store.VideoFeatures), padded at the end to
    the longest; `max_steps` keeps each video's first steps only (for a small input example)."""
    lengths = [min(v.num_steps, max_steps or v.num_steps) for v in videos]
    packed = np.zeros((len(videos), max(lengths, default=0), packed_width(dims)), np.float32)
    for row, v, n in zip(packed, videos, lengths, strict=True):
        present = v.present()
        columns = [np.asarray(v.features[m], np.float32)[:n] for m in dims]
        shots = np.zeros(n, bool) if v.shot_start is None else v.shot_start[:n]  # all 0: unknown
        columns += [present["body"][:n, None], present["face"][:n, None], shots[:, None], np.ones((n, 1))]
        row[:n] = np.concatenate(columns, axis=1)
    return packed


class ScoringModel(torch.nn.Module):
    """ASRN as logged to MLflow: packed store rows in (module docstring, `pack_videos`), (B, C) probabilities out.

    It runs the same sequence former and collation (`asrn.sequence.collate`) as `asrn train` and `asrn predict`, so
    its scores are best.pt's. `labels` names the output columns.
    """

    def __init__(self, model: torch.nn.Module, task: str, labels: Sequence[str]):
        super().__init__()
        self.model, self.task, self.labels = model.eval(), task, list(labels)
        self.dims = dict(model.config.dims)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        from asrn.sequence import collate

        width = packed_width(self.dims)
        if packed.dim() != 3 or packed.shape[2] != width:
            layout = " | ".join([*(f"{m} ({d})" for m, d in self.dims.items()), *PACKED_FLAGS])
            raise ValueError(f"input has shape {tuple(packed.shape)}, expected (videos, steps, {width}): {layout}")
        batch = collate(self._videos(packed.detach().float().cpu().numpy()), self.task)
        device = next(self.model.buffers()).device
        batch = batch.to(device)
        out = self.model(**batch.inputs())
        return torch.sigmoid(out.logits.float())  # (B, C)

    def _videos(self, packed: np.ndarray) -> list:
        """The VideoFeatures of each packed row (its valid steps, which must come first)."""
        from asrn.store import VideoFeatures

        videos = []
        for b, row in enumerate(packed):  # (T, F)
            valid = row[:, -1] > 0.5
            n = int(valid.sum())
            if n == 0 or not valid[:n].all():
                raise ValueError(f"video {b} of the input: its valid steps (last column 1) must be a non-empty "
                                 "prefix of its rows, padding after them")
            features, start = {}, 0
            for m, d in self.dims.items():
                features[m], start = row[:n, start:start + d], start + d
            shots = row[:n, start + 2] > 0.5  # (n,)
            videos.append(VideoFeatures(video_id=str(b), split="", labels=[], timestamp=np.arange(n, dtype=np.float32),
                                        features=features, has_body=row[:n, start] > 0.5,
                                        has_face=row[:n, start + 1] > 0.5, shot_start=shots if shots[0] else None))
        return videos


@contextmanager
def using_tracking_uri(uri: str) -> Iterator[None]:
    """Use `uri` as MLflow's global tracking URI in the block (log_model and the registry read it), then restore
    the previous one and MLFLOW_TRACKING_URI, which MLflow rewrites."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    env = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def log_best_model(tracking_uri: str, run_id: str, checkpoint: Path | Location, example,
                   registered_name: str | None = None):
    """Log best.pt to the run as an MLflow PyTorch model (`ScoringModel`), with a signature and an input example
    (the first EXAMPLE_STEPS steps of the store video `example`); register it as `registered_name` when given.
    The run is reopened for it (`mlflow.start_run(run_id=...)`), which ends it as FINISHED: log its last metrics
    and its final status afterwards (`finish_run`).

    The model is pickled with asrn's own code beside it (`code_paths`), so loading needs torch, numpy and pyarrow
    but not this package. Returns MLflow's ModelInfo (model_uri, registered_model_version, ...).
    """
    import mlflow
    import mlflow.pytorch
    import pyarrow
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from asrn.checkpoint import load_checkpoint

    try:
        os.getcwd()  # MLflow needs a working directory to log a model
    except FileNotFoundError:  # a Ray job's driver can outlive its working_dir, which Ray reclaims during the run
        os.chdir(tempfile.gettempdir())
    model, saved = load_checkpoint(checkpoint)
    scorer = ScoringModel(model, saved["task"], saved["labels"])
    width = packed_width(scorer.dims)
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, width))]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(scorer.labels)))]))
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}",
                    f"pyarrow=={pyarrow.__version__}", f"mlflow=={mlflow.__version__}"]
    layout = " | ".join([*(f"{m} ({d})" for m, d in scorer.dims.items()), *PACKED_FLAGS])
    metadata = {"task": saved["task"], "labels": scorer.labels, "variant": model.config.variant,
                "epoch": saved.get("epoch"), "thresholds": saved["thresholds"],
                "input": f"float32 (videos, steps, {width}) of store rows: {layout}",
                "output": "float32 (videos, classes) probabilities, classes as in labels",
                "store": {k: saved["store_info"].get(k) for k in ("preset", "fps", "detector", "weights")}}
    # the run active here, so that the model lands in the run's experiment (MLflow takes the active one)
    with using_tracking_uri(tracking_uri), mlflow.start_run(run_id=run_id, log_system_metrics=False):
        return mlflow.pytorch.log_model(
            scorer, name=MODEL_NAME, signature=signature, serialization_format="pickle",
            input_example=pack_videos([example], scorer.dims, max_steps=EXAMPLE_STEPS),
            code_paths=[str(Path(__file__).parent)], conda_env=conda_environment(requirements), metadata=metadata,
            registered_model_name=registered_name)


def conda_environment(requirements: list[str]) -> dict:
    """The model's environment, given whole: from `pip_requirements` alone MLflow asks the running environment
    for pip's version, which a uv environment has not got (a warning on every run)."""
    python = ".".join(platform.python_version_tuple()[:2])
    return {"name": "asrn", "channels": ["conda-forge"], "dependencies": [f"python={python}", "pip",
                                                                           {"pip": requirements}]}


def model_line(model_info, registered_name: str | None = None) -> str:
    """The console line naming a logged model, its registered version, and how to load it."""
    registered = (f" (registered: models:/{registered_name}/{model_info.registered_model_version})"
                  if registered_name else "")
    return (f"MLflow model {model_info.model_uri}{registered}; load it with "
            f"mlflow.pytorch.load_model('{model_info.model_uri}')")
