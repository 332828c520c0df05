"""One GPU check (issue 21, point 8): the library functions the Ray actors and Train workers call, in-process, on one
GPU, in under 8 minutes; the figures go to benchmarks/results/gpu.json.

    python benchmarks/gpu_check.py [--out benchmarks/results/gpu.json]     # on a GPU machine (no Ray needed)
    python benchmarks/gpu_check.py --tiny --out /tmp/gpu.json              # CPU, tiny sizes (tests/test_gpu_check.py)

Parts (each timed; CUDA synchronised before every clock read; peak GPU memory per part):
- extraction: synthetic videos (asrn.synth_videos) through `prepare_video` with a random-init Faster R-CNN R50-FPN
  on the device (asrn.detect.FasterRCNNDetector, in chunks) and `encode_batch` with the preset's encoders
  (`paper`, random init) on the device, as the prepare tasks and encoder actors of `asrn extract` run them;
- training: `loop.train_epoch` and `loop.evaluate` at fp32 and bf16 on a synthetic store (asrn.synth_features),
  same seed, the two loss curves side by side, and `model.part_dtypes` under each precision;
- BDLSTM (asrn.model.BoundaryLSTM) forward + backward against cuDNN nn.LSTM at the paper's sizes;
- one epoch over a store of SRIV's shape (benchmarks/sriv_scale.py: 3,124 videos, paper dims) against the
  README's projection (178-215 s for 200 epochs with per-step collation: 0.89-1.08 s an epoch);
- `asrn train --use-gpu` for two epochs, only where Ray imports (a lent GPU machine has none: recorded as skipped).
Nothing here imports Ray. On a CPU without --tiny it runs the full sizes (slow; never a GPU figure).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import sriv_scale  # noqa: E402
from machine import machine, write_results  # noqa: E402

from asrn.detect import FasterRCNNDetector  # noqa: E402
from asrn.encoders import build_encoders  # noqa: E402
from asrn.features import VideoSettings, encode_batch, prepare_video  # noqa: E402
from asrn.labels import task_labels  # noqa: E402
from asrn.loop import RECIPES, build_optimizer, evaluate, train_epoch  # noqa: E402
from asrn.manifest import read_manifest  # noqa: E402
from asrn.model import ASRN, BoundaryLSTM, ModelConfig, part_dtypes  # noqa: E402
from asrn.sequence import collate  # noqa: E402
from asrn.store import input_statistics, load_videos  # noqa: E402
from asrn.synth_features import synthesize_feature_store  # noqa: E402
from asrn.synth_videos import synthesize_videos  # noqa: E402

TASK = "sub"
README_EPOCH_S = (178.0 / 200, 215.0 / 200)  # README "SRIV scale": the projected epoch on one H100, per-step collate
FULL = {"videos": 24, "extract_videos": 24, "seconds": 6.0, "size": (640, 360), "preset": "paper",
        "detector_side": 360, "proposals": 1000,
        "store_videos": 400, "hidden": 256, "epochs": 4, "batch": 32, "bdlstm": (256, 32, 20), "rounds": 20,
        "sriv_videos": sriv_scale.SRIV_VIDEOS, "sriv_hours": sriv_scale.SRIV_HOURS, "sriv_dims": None}
TINY = {"videos": 6, "extract_videos": 2, "seconds": 1.0, "size": (96, 64), "preset": "lite",
        "detector_side": 64, "proposals": 50,
        "store_videos": 24, "hidden": 16, "epochs": 2, "batch": 8, "bdlstm": (16, 4, 6), "rounds": 2,
        "sriv_videos": 12, "sriv_hours": 0.02, "sriv_dims": {"rgb": 8, "motion": 8, "body": 8, "face": 4}}


def timed(device: torch.device, run: Callable[[], object]) -> tuple[object, float, int | None]:
    """(result, seconds, peak GPU bytes or None) of `run()`, the device synchronised around it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return result, time.perf_counter() - started, peak


def check_extraction(work: Path, size: dict, device: torch.device) -> dict:
    """prepare_video (Faster R-CNN on the device, chunked) and encode_batch (the preset's encoders on the device)."""
    import torchvision

    width, height = size["size"]
    manifest = synthesize_videos(work / "videos", num_videos=size["videos"], seed=1, width=width, height=height,
                                 seconds=size["seconds"])
    entries = read_manifest(manifest)[:size["extract_videos"]]
    torch.manual_seed(0)
    model = torchvision.models.get_model("fasterrcnn_resnet50_fpn", weights=None, weights_backbone=None,
                                         min_size=size["detector_side"], max_size=size["detector_side"] * 16 // 9,
                                         rpn_post_nms_top_n_test=size["proposals"])  # torchvision's default: 1000
    detector = FasterRCNNDetector(model, "fasterrcnn_resnet50_fpn", "random-init", device=device)
    settings = VideoSettings(preset=size["preset"])
    prepared, prepare_s, detect_peak = timed(device, lambda: [prepare_video(e.path, None, settings, detector)
                                                              for e in entries])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-init encoders, on purpose
        encoders = build_encoders(size["preset"], None, str(device))
    _, encode_s, encode_peak = timed(device, lambda: encode_batch(prepared, encoders))
    steps = sum(v.num_steps for v in prepared)
    return {"videos": len(prepared), "steps": steps, "preset": size["preset"], "frame_size": [height, width],
            "detection": detector.describe() | {"cascades": None, "tracking": None},
            "prepare_s": round(prepare_s, 2), "prepare_steps_per_s": round(steps / prepare_s, 2),
            "prepare_peak_gpu_bytes": detect_peak, "encode_s": round(encode_s, 2),
            "encode_steps_per_s": round(steps / encode_s, 2), "encode_peak_gpu_bytes": encode_peak,
            "note": "prepare = decode + Faster R-CNN (random init, device above) + Haar faces + crops + DIS flow"}


def check_training(work: Path, size: dict, device: torch.device) -> dict:
    """train_epoch + evaluate at fp32 and at bf16 from the same initial weights; dtypes inside the model."""
    store = synthesize_feature_store(work / "store", num_videos=size["store_videos"], seed=3)
    train, val = load_videos(store, ["train"]), load_videos(store, ["val"])
    dims = {m: x.shape[1] for m, x in train[0].features.items()}
    recipe = RECIPES["default"]
    val_batches = [collate(val[i:i + size["batch"]], TASK) for i in range(0, len(val), size["batch"])]
    out: dict = {"videos": {"train": len(train), "val": len(val)}, "hidden": size["hidden"], "recipe": recipe.name}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = ASRN(ModelConfig(dims=dims, num_classes=len(task_labels(TASK)), hidden=size["hidden"],
                                 dropout=recipe.dropout))
        model.set_input_stats(input_statistics(train))
        model.to(device)
        optimizer, scheduler = build_optimizer(model, recipe)
        curve = []
        for epoch in range(1, size["epochs"] + 1):
            order = np.random.default_rng([epoch]).permutation(len(train))
            batches = [collate([train[i] for i in order[s:s + size["batch"]]], TASK)
                       for s in range(0, len(train), size["batch"])]
            loss, seconds, peak = timed(device, _epoch(model, batches, optimizer, device, precision, epoch))
            scheduler.step()
            val_loss = evaluate(model, val_batches, device, precision)[0]
            curve.append({"epoch": epoch, "train_loss": round(loss.mean, 5), "val_loss": round(val_loss, 5),
                          "epoch_s": round(seconds, 3), "peak_gpu_bytes": peak})
        batch = val_batches[0].to(device)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            dtypes = part_dtypes(model.eval(), batch.features, batch.present, batch.mask)
        out[precision] = {"curve": curve, "dtypes": dtypes}
    out["side_by_side"] = [{"epoch": a["epoch"], "train_loss_fp32": a["train_loss"], "train_loss_bf16": b["train_loss"],
                            "val_loss_fp32": a["val_loss"], "val_loss_bf16": b["val_loss"]}
                           for a, b in zip(out["fp32"]["curve"], out["bf16"]["curve"], strict=True)]
    return out


def _epoch(model, batches, optimizer, device, precision, epoch) -> Callable[[], object]:
    return lambda: train_epoch(model, batches, optimizer, device, precision, epoch)


def check_bdlstm(size: dict, device: torch.device) -> dict:
    """BoundaryLSTM forward + backward against nn.LSTM (cuDNN on a GPU), float32, median of `rounds` calls."""
    H, B, T = size["bdlstm"]
    torch.manual_seed(0)
    x = torch.randn(B, T, H, device=device, requires_grad=True)
    mask = torch.ones(B, T, dtype=torch.bool, device=device)
    bdlstm, lstm = BoundaryLSTM(H).to(device), torch.nn.LSTM(H, H, batch_first=True).to(device)
    runs = {"bdlstm": lambda: bdlstm(x, mask)[0].sum().backward(), "nn_lstm": lambda: lstm(x)[0].sum().backward()}
    out: dict = {"H": H, "B": B, "T": T}
    for name, run in runs.items():
        run()  # warm-up (cuDNN plans, allocator)
        times = [timed(device, run)[1] for _ in range(size["rounds"])]
        out[f"{name}_ms_median"] = round(1000 * float(np.median(times)), 3)
    out["ratio_bdlstm_to_nn_lstm"] = round(out["bdlstm_ms_median"] / out["nn_lstm_ms_median"], 2)
    return out


def check_sriv_epoch(work: Path, size: dict, device: torch.device) -> dict:
    """One epoch of the paper recipe over a store of SRIV's shape (sriv_scale's store, loader and epoch)."""
    started = time.perf_counter()
    store = sriv_scale.synthesize_sriv_store(work / "sriv", num_videos=size["sriv_videos"], hours=size["sriv_hours"],
                                             dims=size["sriv_dims"])
    write_s = time.perf_counter() - started
    train, read_s = sriv_scale.load_train(store)
    model = sriv_scale.build_model(size["sriv_dims"] or sriv_scale.paper_dims(), train, 0, device)
    optimizer, scheduler = build_optimizer(model, RECIPES["paper"])
    epoch = sriv_scale.run_epoch(model, optimizer, scheduler, train, 1.0, 0, 1, device)
    return {"videos": size["sriv_videos"], "train_videos": len(train), "store_write_s": round(write_s, 1),
            "store_read_s": round(read_s, 1), "epoch": epoch,
            "readme_projected_epoch_s": list(README_EPOCH_S) if size["sriv_dims"] is None else None}


def check_ray_train(work: Path, device: torch.device, tiny: bool) -> dict:
    """`asrn train --use-gpu` for two epochs, where Ray is importable and a GPU is present; else why not."""
    if tiny:
        return {"skipped": "--tiny (a test must not start Ray)"}
    if importlib.util.find_spec("ray") is None:
        return {"skipped": "ray is not importable on this machine"}
    if device.type != "cuda":
        return {"skipped": "no GPU"}
    store = synthesize_feature_store(work / "ray-store", num_videos=60, seed=4)
    command = [sys.executable, "-m", "asrn.cli", "train", "--features", str(store), "--task", TASK, "--out",
               str(work / "ray-run"), "--use-gpu", "--epochs", "2"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    return {"command": " ".join(command[1:]), "returncode": done.returncode,
            "seconds": round(time.perf_counter() - started, 1), "output_tail": (done.stdout + done.stderr)[-2000:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (CPU, seconds): keeps the script from rotting")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu.json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device, size = torch.device(args.device), TINY if args.tiny else FULL
    result: dict = {"machine": machine(), "device": str(device), "tiny": args.tiny,
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        parts = {"extraction": lambda: check_extraction(work, size, device),
                 "training": lambda: check_training(work, size, device), "bdlstm": lambda: check_bdlstm(size, device),
                 "sriv_epoch": lambda: check_sriv_epoch(work, size, device),
                 "ray_train": lambda: check_ray_train(work, device, args.tiny)}
        for name, run in parts.items():
            part_started = time.perf_counter()
            result[name] = run()
            result[name]["part_s"] = round(time.perf_counter() - part_started, 1)
            print(f"gpu_check: {name} done in {result[name]['part_s']} s", flush=True)
            write_results(args.out, result)  # after every part: a run cut short keeps what it measured
    result["total_s"] = round(time.perf_counter() - started, 1)
    print(f"gpu_check: {write_results(args.out, result)} ({result['total_s']} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
