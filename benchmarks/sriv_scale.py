"""SRIV-scale projection: a training epoch and an extraction step measured here, projected to 200 epochs and 25 h.

    python benchmarks/sriv_scale.py [--threads 2,1] [--fraction 0.25,1.0] [--epochs 2] [--device cpu]
                                    [--extract-videos 3] [--cores 16,32] [--out benchmarks/results/sriv_scale.json]

Method (GitHub issue 14, point 5):
- Store: a synthetic feature store of SRIV's size and shape (`synthesize_sriv_store`): 3,124 videos totalling 25 h,
  lengths lognormal (sigma LENGTH_SIGMA, clipped to LENGTH_CLIP_S, rescaled so the total is exactly 25 h, mean
  ~28.8 s), T = round(seconds x fps) steps at the extraction fps (asrn.features.VideoSettings.fps), the paper
  preset's dims (asrn.encoders.PRESETS['paper']: rgb 2048, motion 2048 (TSN ResNet-101), body 4096 (VGG19 fc7),
  face 260), random float16 rows in Parquet parts of `--videos-per-part` videos (asrn.store.write_videos);
  has_body / has_face drawn per step at PRESENT_RATE; labels by asrn.synth_features.draw_labels (SRIV Table 1
  rates); 70/15/15 splits. What matters is size and shape: the values are noise.
- Training epoch (measured): the paper recipe (asrn.loop.RECIPES['paper']: hidden 256, batch 32, SGD, dropout 0.7),
  ASRN (variant asrn, task sub), `collate` (window 3, no step cap) per batch of shuffled videos and `train_epoch`, on
  the train split: the plain loop of benchmarks/train.py. The store at paper dims is ~3 GB of float16 Parquet
  (~6 GB as float32), so the train split is read a part at a time and held as float16 (~2 GB; `collate` converts
  each batch's rows to float32, a little more work than from float32 rows); reading is timed once, apart, as
  `asrn train` reads its store before the first epoch. Each run (`--threads`, `--fraction`, paired) trains
  `--epochs` epochs on a shuffled `fraction` of the train videos and scales the last epoch by 1 / fraction.
- Counted pass (measured): one more epoch under torch.utils.flop_counter.FlopCounterMode (matmul/conv FLOPs,
  forward + backward) and a dispatch-mode counter of aten ops that launch work (views and empty allocations left
  out), per batch with its padded length T. A least-squares fit ops = a + b T gives b, the ops per recurrent step
  (BDLSTM forward and backward, GLA's LSTM), which run one after another.
- GPU training (projected, no GPU measured unless `--device cuda`): per epoch
    compute = FLOPs / (H100 bf16 dense peak x assumed utilisation)
    launch  = kernel-launching ops x per-op launch latency   (small kernels: the GPU waits for the host)
    h2d     = bytes of the float32 batches / host-to-device bandwidth
  lower bound max(compute, launch), upper bound compute + launch + h2d; x 200 epochs. Collate runs on the host: its
  measured CPU time is reported beside (overlappable with the GPU). A second projection takes the batches
  asrn.shards.ResidentSplit forms (the split collated once and held on the GPU, length-bucketed batches: no collate,
  no copies, less padding): FLOPs x sum(B T) ratio, ops from the fit a x batches + b x sum(T).
  Op counts come from CPU dispatch, where nn.LSTM decomposes into per-step ops (cuDNN fuses them): the launch term
  over-counts GLA's LSTM, so it leans high.
- Extraction (measured per step, projected to 25 h x fps steps): the CPU stage (asrn.features.prepare_video: decode,
  detect with the offline OpenCV chain, crop, DIS flow) on synthetic videos (asrn.synth_videos) at
  `--extract-size` and source `--extract-src-fps`, process CPU seconds (all threads) per step; the paper preset's
  encoders (build_encoders('paper'), random init) counted with FlopCounterMode per step (every modality encoded:
  body and face present at every step, an upper bound) and timed on this CPU. One H100 with N cores:
    cpu_stage = steps x CPU s per step / N          (videos in parallel, one per core, perfect scaling)
    gpu_stage = steps x encoder FLOPs per step / (fp16 dense peak x assumed utilisation)
  lower bound max(cpu_stage, gpu_stage) (Ray Data streams the stages, so they overlap), upper bound their sum.
- Paper figure: 2,735 s for 200 epochs on two TITAN X (paper §4.3), beside the CPU figure here.
- Machine: cores, CPU model, torch threads, 1-minute load average before and after each part.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from machine import load, machine, write_results  # noqa: E402

from asrn.encoders import PRESETS, build_encoders  # noqa: E402
from asrn.features import VideoSettings  # noqa: E402
from asrn.labels import task_labels  # noqa: E402
from asrn.loop import RECIPES, build_optimizer, train_epoch  # noqa: E402
from asrn.model import ASRN, ModelConfig  # noqa: E402
from asrn.sequence import collate  # noqa: E402
from asrn.shards import ResidentSplit  # noqa: E402
from asrn.store import (  # noqa: E402
    MODALITIES,
    StoreInfo,
    VideoFeatures,
    input_statistics,
    part_files,
    table_to_videos,
    write_info,
    write_videos,
)
from asrn.synth_features import SPLIT_FRACTIONS, draw_labels  # noqa: E402

SRIV_VIDEOS = 3124  # paper §4.1
SRIV_HOURS = 25.0  # paper §4.1: "about 25 hours"
LENGTH_SIGMA = 0.6  # lognormal sigma of the video lengths (assumed: SRIV's spread is not published)
LENGTH_CLIP_S = (4.0, 300.0)  # seconds, before rescaling to SRIV_HOURS
PRESENT_RATE = {"body": 0.85, "face": 0.75}  # per-step detection rates of the synthetic store (assumed)
WINDOW = 3  # the sequence former's window (paper §4.2)
TASK = "sub"
PAPER_EPOCHS = 200
PAPER_200_EPOCHS_S = 2735.0  # paper §4.3: 200 epochs on two TITAN X
GOAL_TRAIN_S = 270.0  # issue 14: a tenth of the paper's figure, on one H100
GOAL_EXTRACT_S = 15 * 60.0  # issue 14: extraction of SRIV with the paper preset, on one H100
H100 = {  # assumed figures of one H100 SXM (NVIDIA datasheet; dense, no sparsity)
    "bf16_dense_peak_flops": 989.4e12,
    "fp16_dense_peak_flops": 989.4e12,
    "train_utilisation": 0.25,  # small matmuls (B x T rows of 256-8452 wide): well below peak
    "encoder_utilisation": 0.40,  # ResNet-101 / VGG19 convolutions in fp16 autocast, channels_last
    "launch_latency_s": 5e-6,  # per kernel-launching op, eager PyTorch (host dispatch + launch)
    "launch_latency_s_slow_host": 10e-6,  # the same on a slower host: a sensitivity line, not a bound
    "h2d_bytes_per_s": 25e9,  # pinned host-to-device copies over PCIe Gen5 / SXM host link, sustained
}
NO_LAUNCH = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "lift_fresh",
             "_to_copy_noop", "set_", "resize_", "alias", "_local_scalar_dense"}


def paper_dims() -> dict[str, int]:
    return {m: PRESETS["paper"][m].dim for m in MODALITIES}


def sriv_lengths(num_videos: int = SRIV_VIDEOS, hours: float = SRIV_HOURS, sigma: float = LENGTH_SIGMA,
                 seed: int = 0) -> np.ndarray:
    """(N,) video lengths in seconds: lognormal, clipped to LENGTH_CLIP_S, rescaled to total `hours` exactly."""
    rng = np.random.default_rng([seed, 1])
    mean = hours * 3600.0 / num_videos
    raw = np.clip(rng.lognormal(np.log(mean) - sigma ** 2 / 2, sigma, num_videos), *LENGTH_CLIP_S)
    return raw * (hours * 3600.0 / raw.sum())


def sriv_splits(num_videos: int, seed: int = 0) -> list[str]:
    """Exact 70/15/15 counts in a random order (each split at least one video when num_videos >= 3)."""
    n_val = max(1, round(num_videos * SPLIT_FRACTIONS["val"]))
    n_test = max(1, round(num_videos * SPLIT_FRACTIONS["test"]))
    splits = np.array(["val"] * n_val + ["test"] * n_test + ["train"] * (num_videos - n_val - n_test))
    return list(np.random.default_rng([seed, 2]).permutation(splits))


def synthesize_sriv_store(out: Path, num_videos: int = SRIV_VIDEOS, hours: float = SRIV_HOURS,
                          fps: float = VideoSettings.fps, dims: dict[str, int] | None = None, seed: int = 0,
                          videos_per_part: int = 100) -> Path:
    """Write a store of SRIV's size and shape (random float16 features, see the module docstring) into `out`.

    Lengths are `sriv_lengths(num_videos, hours)`; each part is generated, written and dropped before the next, so
    memory holds one part. Returns `out`.
    """
    dims = dims or paper_dims()
    out.mkdir(parents=True, exist_ok=True)
    lengths = sriv_lengths(num_videos, hours, seed=seed)
    splits = sriv_splits(num_videos, seed)
    for start in range(0, num_videos, videos_per_part):
        videos = []
        for i in range(start, min(start + videos_per_part, num_videos)):
            rng = np.random.default_rng([seed, 3, i])
            t = max(1, round(lengths[i] * fps))
            features = {m: rng.standard_normal((t, d), dtype=np.float32).astype(np.float16) for m, d in dims.items()}
            videos.append(VideoFeatures(
                video_id=f"sriv-{i:05d}", split=splits[i], labels=list(draw_labels(rng)),
                timestamp=(np.arange(t, dtype=np.float32) / fps), features=features,
                has_body=rng.random(t) < PRESENT_RATE["body"], has_face=rng.random(t) < PRESENT_RATE["face"]))
        write_videos(out, videos, name=f"part-{start // videos_per_part:05d}")
    write_info(out, StoreInfo(preset="sriv-scale-random", dims=dict(dims), fps=float(fps),
                              extra={"generator": "benchmarks/sriv_scale.py synthesize_sriv_store", "seed": seed,
                                     "num_videos": num_videos, "hours": hours, "length_sigma": LENGTH_SIGMA}))
    return out


def store_shape(store: Path) -> dict:
    """Videos, steps, kept steps (window 3) and bytes of a store, from its split and timestamp columns."""
    videos, steps, kept, by_split = 0, 0, 0, {}
    for part in part_files(store):
        table = pq.read_table(part, columns=["split", "timestamp"])
        lengths = table.column("timestamp").combine_chunks().value_lengths().to_numpy()
        videos, steps = videos + len(lengths), steps + int(lengths.sum())
        kept += int((-(-lengths // WINDOW)).sum())
        for split in table.column("split").to_pylist():
            by_split[split] = by_split.get(split, 0) + 1
    return {"videos": videos, "steps": steps, "kept_steps_window3": kept, "videos_by_split": by_split,
            "parquet_bytes": sum(p.stat().st_size for p in part_files(store))}


class OpCounter(TorchDispatchMode):
    """Counts aten ops that launch work (views and empty allocations left out)."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not (func.is_view or func.overloadpacket.__name__ in NO_LAUNCH):
            self.ops += 1
        return func(*args, **(kwargs or {}))


def load_train(store: Path) -> tuple[list[VideoFeatures], float]:
    """The train split, read a part at a time and held as float16 (half of `load_videos`' float32), and the seconds
    it took; `collate` converts each batch's rows to float32 as it gathers them."""
    started, train = time.perf_counter(), []
    for part in part_files(store):
        for v in table_to_videos(pq.read_table(part)):
            if v.split == "train":
                v.features = {m: x.astype(np.float16) for m, x in v.features.items()}
                train.append(v)
    return train, time.perf_counter() - started


def batches(videos: Iterator[VideoFeatures], size: int, timer: dict, device: torch.device,
            on_batch=None) -> Iterator:
    """Batches of `size` videos (collate, window 3), across part boundaries; collate time summed into timer."""
    chunk = []
    for v in videos:
        chunk.append(v)
        if len(chunk) == size:
            yield _collated(chunk, timer, device, on_batch)
            chunk = []
    if chunk:
        yield _collated(chunk, timer, device, on_batch)


def _collated(chunk: list, timer: dict, device: torch.device, on_batch):
    started = time.perf_counter()
    batch = collate(chunk, TASK, WINDOW)
    timer["collate_s"] += time.perf_counter() - started
    timer["batches"] += 1
    timer["videos"] += len(chunk)
    timer["padded_steps"] += int(batch.mask.numel())
    timer["valid_steps"] += int(batch.mask.sum())
    timer["batch_bytes"] += sum(x.numel() * x.element_size() for x in batch.features.values())
    if on_batch is not None:
        on_batch(batch)
    return batch


def build_model(dims: dict[str, int], train: list[VideoFeatures], seed: int, device: torch.device) -> ASRN:
    """ASRN at the paper recipe's width and dropout, standardised by the first 100 train videos' statistics."""
    recipe = RECIPES["paper"]
    torch.manual_seed(seed)
    model = ASRN(ModelConfig(dims=dims, num_classes=len(task_labels(TASK)), variant="asrn", hidden=recipe.hidden,
                             dropout=recipe.dropout))
    model.set_input_stats(input_statistics(train[:100]))  # fewer videos than the split: the cost is the same
    return model.to(device)


def run_epoch(model: ASRN, optimizer, scheduler, train: list[VideoFeatures], fraction: float, seed: int, epoch: int,
              device: torch.device, on_batch=None) -> dict:
    """One epoch over a shuffled `fraction` of the train videos (collate + forward + backward + SGD step)."""
    order = np.random.default_rng([seed, 7, epoch]).permutation(len(train))[:max(1, round(len(train) * fraction))]
    timer = {"collate_s": 0.0, "batches": 0, "videos": 0, "padded_steps": 0, "valid_steps": 0, "batch_bytes": 0}
    load_before, cpu_before = load(), time.process_time()
    started = time.perf_counter()
    precision = "bf16" if device.type == "cuda" else "fp32"
    loss = train_epoch(model, batches((train[i] for i in order), RECIPES["paper"].batch_size, timer, device,
                                      on_batch), optimizer, device, precision, epoch=epoch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    scheduler.step()
    return {"epoch": epoch, "fraction": fraction, "threads": torch.get_num_threads(), "train_s": round(wall, 2),
            "process_cpu_s": round(time.process_time() - cpu_before, 2), "collate_s": round(timer["collate_s"], 2),
            "forward_backward_step_s": round(wall - timer["collate_s"], 2), "train_loss": round(loss.mean, 4),
            **{k: v for k, v in timer.items() if k != "collate_s"},
            "load_average_before": load_before, "load_average_after": load()}


def counted_epoch(model: ASRN, optimizer, scheduler, train: list[VideoFeatures], seed: int, epoch: int) -> dict:
    """One whole epoch under FlopCounterMode and OpCounter: per batch (B, T, FLOPs, ops) and the fit ops = a + b T."""
    flops, ops = FlopCounterMode(display=False), OpCounter()
    rows, last = [], {"flops": 0, "ops": 0, "T": None, "B": None}

    def on_batch(batch):  # called after collate, before the batch is trained: close the previous one
        if last["T"] is not None:
            rows.append({"B": last["B"], "T": last["T"], "flops": flops.get_total_flops() - last["flops"],
                         "ops": ops.ops - last["ops"]})
        last.update(flops=flops.get_total_flops(), ops=ops.ops, T=int(batch.mask.shape[1]),
                    B=int(batch.mask.shape[0]))

    with flops, ops:
        spans = run_epoch(model, optimizer, scheduler, train, 1.0, seed, epoch, torch.device("cpu"), on_batch)
        total_flops, total_ops = flops.get_total_flops(), ops.ops
    rows.append({"B": last["B"], "T": last["T"], "flops": total_flops - last["flops"], "ops": total_ops - last["ops"]})
    t = np.array([r["T"] for r in rows], float)
    b_t = np.array([r["B"] * r["T"] for r in rows], float)
    op_counts = np.array([r["ops"] for r in rows], float)
    slope, intercept = np.polyfit(t, op_counts, 1) if len(set(t)) > 1 else (0.0, float(op_counts.mean()))
    return {"spans_under_counters": spans, "flops": int(total_flops), "ops": int(total_ops),
            "batches": len(rows), "sum_T_over_batches": int(t.sum()), "sum_BT_over_batches": int(b_t.sum()),
            "flops_per_padded_step": round(total_flops / b_t.sum()),
            "ops_fit": {"ops_per_batch_fixed": round(float(intercept), 1),
                        "ops_per_recurrent_step": round(float(slope), 2),
                        "T_min": int(t.min()), "T_median": float(np.median(t)), "T_max": int(t.max())}}


def resident_batches(kept: np.ndarray, seed: int, epoch: int = 1) -> dict:
    """Batch widths of one epoch as asrn.shards.ResidentSplit forms them (length-sorted within chunks of BUCKET
    batches), from the train videos' kept-step counts alone: no tensors are built."""
    rows = ResidentSplit(padded=None, lengths=kept).epoch_order(RECIPES["paper"].batch_size, seed, epoch)
    widths = np.array([kept[r].max() for r in rows])
    sizes = np.array([len(r) for r in rows])
    return {"batches": len(rows), "sum_T_over_batches": int(widths.sum()),
            "sum_BT_over_batches": int((widths * sizes).sum()), "valid_steps": int(kept.sum()),
            "resident_float32_bytes": int(len(kept) * kept.max() * sum(paper_dims().values()) * 4)}


def gpu_training_projection(counted: dict, collate_s: float, resident: dict) -> dict:
    """200 epochs on one H100 from the counted epoch's FLOPs, ops and batch bytes (module docstring); `collate_s`:
    the host's collate time per epoch, measured here; `resident`: `resident_batches` of the same train split."""
    scale, epoch = 1.0, {**counted["spans_under_counters"], "collate_s": collate_s}
    compute = scale * counted["flops"] / (H100["bf16_dense_peak_flops"] * H100["train_utilisation"])
    launch = scale * counted["ops"] * H100["launch_latency_s"]
    recurrent = scale * counted["ops_fit"]["ops_per_recurrent_step"] * counted["sum_T_over_batches"] \
        * H100["launch_latency_s"]
    h2d = scale * epoch["batch_bytes"] / H100["h2d_bytes_per_s"]
    lower, upper = max(compute, launch), compute + launch + h2d
    slow = compute + launch * H100["launch_latency_s_slow_host"] / H100["launch_latency_s"] + h2d
    fit = counted["ops_fit"]
    r_compute = counted["flops_per_padded_step"] * resident["sum_BT_over_batches"] \
        / (H100["bf16_dense_peak_flops"] * H100["train_utilisation"])
    r_ops = fit["ops_per_batch_fixed"] * resident["batches"] + fit["ops_per_recurrent_step"] * resident[
        "sum_T_over_batches"]
    r_launch = r_ops * H100["launch_latency_s"]
    return {
        "per_epoch_s": {"compute": round(compute, 4), "launch_all_ops": round(launch, 4),
                        "launch_recurrent_ops_only": round(recurrent, 4), "h2d": round(h2d, 4),
                        "lower_bound": round(lower, 4), "upper_bound": round(upper, 4),
                        "host_collate_measured_here": round(scale * epoch["collate_s"], 3)},
        "epochs_200_s": {"lower_bound": round(PAPER_EPOCHS * lower, 1), "upper_bound": round(PAPER_EPOCHS * upper, 1),
                         "upper_bound_plus_host_collate_not_overlapped":
                             round(PAPER_EPOCHS * (upper + scale * epoch["collate_s"]), 1),
                         "upper_bound_at_slow_host_launch_latency": round(PAPER_EPOCHS * slow, 1)},
        "formula": "per epoch: compute = FLOPs / (bf16_dense_peak_flops x train_utilisation); launch = ops x "
                   "launch_latency_s; h2d = float32 batch bytes / h2d_bytes_per_s; lower = max(compute, launch), "
                   "upper = compute + launch + h2d; x 200 epochs",
        "resident_bucketed": {
            "what": "the same epoch as asrn train's direct-read path runs it (asrn.shards.ResidentSplit): the train "
                    "split collated once and kept on the GPU, batches length-sorted within chunks of 8: no host "
                    "collate, no per-batch copy, less padding. FLOPs scale with sum(B x T), ops with the fit "
                    "a x batches + b x sum(T). SRIV at paper dims is ~3 GB of Parquet, above the default "
                    "--direct-read-max-mb 1024: asrn train takes this path with --direct-read-max-mb 4000",
            **resident, "ops": round(r_ops),
            "per_epoch_s": {"compute": round(r_compute, 4), "launch": round(r_launch, 4),
                            "lower_bound": round(max(r_compute, r_launch), 4),
                            "upper_bound": round(r_compute + r_launch, 4)},
            "epochs_200_s": {"lower_bound": round(PAPER_EPOCHS * max(r_compute, r_launch), 1),
                             "upper_bound": round(PAPER_EPOCHS * (r_compute + r_launch), 1),
                             "upper_bound_at_slow_host_launch_latency": round(PAPER_EPOCHS * (
                                 r_compute + r_launch * H100["launch_latency_s_slow_host"] / H100["launch_latency_s"]),
                                 1)},
        },
    }


# ---------------------------------------------------------------- extraction

def measure_cpu_stage(work: Path, num_videos: int, size: tuple[int, int], src_fps: float, seconds: float,
                      fps: float) -> dict:
    """prepare_video (decode, OpenCV detection, crops, DIS flow; paper preset sizes) per step, after one warm-up."""
    from asrn.features import prepare_video
    from asrn.synth_videos import synthesize_videos

    manifest = synthesize_videos(work / "videos", num_videos=max(6, num_videos + 1), seed=0, width=size[0],
                                 height=size[1], fps=src_fps, seconds=seconds)
    paths = sorted((manifest.parent / "videos").glob("*.mp4"))[:num_videos + 1]
    settings = VideoSettings(preset="paper", fps=fps)
    prepare_video(str(paths[0]), None, settings)  # warm-up: builds the detector, imports the decoder
    steps, wall, cpu, present, load_before = 0, 0.0, 0.0, {"body": 0, "face": 0}, load()
    for path in paths[1:]:
        a, c = time.perf_counter(), time.process_time()
        prepared = prepare_video(str(path), None, settings)
        wall, cpu = wall + time.perf_counter() - a, cpu + time.process_time() - c
        steps += len(prepared.timestamps)
        present["body"] += int((prepared.has_body | prepared.body_tracked).sum())
        present["face"] += int((prepared.has_face | prepared.face_tracked).sum())
    return {"videos": len(paths) - 1, "source": f"{size[0]}x{size[1]} H.264 at {src_fps} fps, {seconds} s each "
            "(asrn.synth_videos)", "detector": prepared.detector, "decoder": prepared.decoder, "steps": steps,
            "wall_s": round(wall, 2), "process_cpu_s": round(cpu, 2),
            "cpu_s_per_step": round(cpu / steps, 4), "wall_s_per_step": round(wall / steps, 4),
            "present_share": {m: round(n / steps, 3) for m, n in present.items()},
            "load_average_before": load_before, "load_average_after": load()}


def measure_encoders(batch: int, repeats: int) -> dict:
    """Paper-preset encoders (random init): FLOPs per step counted, CPU seconds per step timed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoders = build_encoders("paper")
    out, load_before = {}, load()
    for m, encoder in encoders.items():
        c, (h, w) = encoder.in_channels, encoder.input_size
        x = torch.randn(batch, c, h, w)
        with FlopCounterMode(display=False) as counter:
            encoder.encode(x[:1])
        encoder.encode(x)  # warm-up
        times = []
        for _ in range(repeats):
            a = time.perf_counter()
            encoder.encode(x)
            times.append((time.perf_counter() - a) / batch)
        out[m] = {"encoder": encoder.name, "input": [c, h, w], "dim": encoder.dim,
                  "gflops_per_step": round(counter.get_total_flops() / 1e9, 3),
                  "cpu_wall_s_per_step": round(min(times), 4)}
    return {"per_modality": out, "batch": batch, "repeats": repeats, "torch_threads": torch.get_num_threads(),
            "gflops_per_step": round(sum(v["gflops_per_step"] for v in out.values()), 3),
            "cpu_wall_s_per_step": round(sum(v["cpu_wall_s_per_step"] for v in out.values()), 4),
            "load_average_before": load_before, "load_average_after": load()}


def extraction_projection(cpu_stage: dict, encoders: dict, steps: int, cores: list[int]) -> dict:
    gpu = steps * encoders["gflops_per_step"] * 1e9 / (H100["fp16_dense_peak_flops"] * H100["encoder_utilisation"])
    per_cores = {}
    for n in cores:
        cpu = steps * cpu_stage["cpu_s_per_step"] / n
        per_cores[f"{n}_cores"] = {"cpu_stage_s": round(cpu, 1), "gpu_stage_s": round(gpu, 1),
                                   "lower_bound_s": round(max(cpu, gpu), 1), "upper_bound_s": round(cpu + gpu, 1)}
    return {
        "steps": steps, "per_cores": per_cores,
        "cores_for_goal_cpu_stage_alone": math.ceil(steps * cpu_stage["cpu_s_per_step"] / GOAL_EXTRACT_S),
        "gpu_stage_share_of_goal": round(gpu / GOAL_EXTRACT_S, 3),
        "this_machine_cpu_only_s": round(steps * (cpu_stage["cpu_s_per_step"] + encoders["cpu_wall_s_per_step"]), 0),
        "formula": "cpu_stage = steps x cpu_s_per_step / cores; gpu_stage = steps x encoder FLOPs per step / "
                   "(fp16_dense_peak_flops x encoder_utilisation); lower = max, upper = sum; "
                   "this machine, CPU only: steps x (cpu_s_per_step + encoder CPU s per step at its torch threads)",
    }


def summary(result: dict) -> dict:
    """The headline figures against the goals, from the recorded ones alone (a pure function of `result`)."""
    t, out = result["training"], {}
    best = t["cpu_runs"][t["cpu_measured"]["best_run"]]
    last = best["epochs"][-1]
    out["cpu_train_200_epochs"] = {
        "measured_here_wall_s": t["cpu_measured"]["epochs_200_s"],
        "measured_here_process_cpu_s": round(PAPER_EPOCHS * last["process_cpu_s"] / best["fraction_trained"]),
        "threads": best["threads"], "paper_two_titan_x_s": PAPER_200_EPOCHS_S}
    h = t["h100_projection"]
    out["h100_train_200_epochs_projected_s"] = {
        "random_batches_collated_per_batch": [h["epochs_200_s"]["lower_bound"], h["epochs_200_s"]["upper_bound"]],
        "same_plus_host_collate_not_overlapped": h["epochs_200_s"]["upper_bound_plus_host_collate_not_overlapped"],
        "resident_length_bucketed": [h["resident_bucketed"]["epochs_200_s"]["lower_bound"],
                                     h["resident_bucketed"]["epochs_200_s"]["upper_bound"]],
        "goal_s": GOAL_TRAIN_S,
        "meets_goal_upper_bound": {
            "random_batches_collate_overlapped": h["epochs_200_s"]["upper_bound"] <= GOAL_TRAIN_S,
            "random_batches_collate_not_overlapped":
                h["epochs_200_s"]["upper_bound_plus_host_collate_not_overlapped"] <= GOAL_TRAIN_S,
            "resident_length_bucketed": h["resident_bucketed"]["epochs_200_s"]["upper_bound"] <= GOAL_TRAIN_S}}
    if "extraction" in result:
        e = result["extraction"]["h100_projection"]
        out["h100_extract_sriv_projected_s"] = {
            **{k: [v["lower_bound_s"], v["upper_bound_s"]] for k, v in e["per_cores"].items()},
            "goal_s": GOAL_EXTRACT_S, "cores_for_goal": e["cores_for_goal_cpu_stage_alone"],
            "meets_goal_upper_bound": {k: v["upper_bound_s"] <= GOAL_EXTRACT_S for k, v in e["per_cores"].items()}}
    out["all_gpu_figures"] = "projections (no GPU measured)" if result["gpu_measured"] is None else "see gpu_measured"
    return out


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-videos", type=int, default=SRIV_VIDEOS)
    p.add_argument("--hours", type=float, default=SRIV_HOURS)
    p.add_argument("--videos-per-part", type=int, default=100)
    p.add_argument("--threads", default="2,1", help="torch threads of each timed CPU run, comma-separated")
    p.add_argument("--fraction", default="0.25,1.0",
                   help="share of the train split each run's epochs train (then scaled up linearly), per run")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per run (the last is reported)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda to measure the epoch on a GPU as well")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extract-videos", type=int, default=3, help="synthetic videos timed through prepare_video")
    p.add_argument("--extract-size", default="640x360", help="source width x height of the synthetic videos")
    p.add_argument("--extract-src-fps", type=float, default=25.0)
    p.add_argument("--extract-seconds", type=float, default=20.0)
    p.add_argument("--encoder-batch", type=int, default=4)
    p.add_argument("--cores", default="16,32", help="host cores beside the H100 for the extraction projection")
    p.add_argument("--skip-extract", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sriv_scale.json")
    args = p.parse_args(argv)
    args.threads = [int(v) for v in args.threads.split(",") if v]
    args.fraction = [float(v) for v in args.fraction.split(",") if v]
    if len(args.threads) != len(args.fraction):
        p.error("--threads and --fraction need one value per run each")
    torch.set_num_threads(args.threads[0])
    recipe, fps, info = RECIPES["paper"], VideoSettings.fps, machine()
    started = time.perf_counter()
    result: dict = {
        "benchmark": "SRIV-scale projection (issue 14 point 5): a training epoch and an extraction step measured on "
                     "this CPU, projected to 200 epochs and 25 h of video on this CPU and on one H100",
        "command": " ".join(["python", "benchmarks/sriv_scale.py", *(argv if argv is not None else sys.argv[1:])]),
        "method": (__doc__ or "").split("Method (GitHub issue 14, point 5):")[1].strip(),
        "machine": info,
        "gpu_measured": None,
        "assumed_h100": H100,
        "goals": {"train_200_epochs_s": GOAL_TRAIN_S, "extract_sriv_paper_preset_s": GOAL_EXTRACT_S},
        "paper": {"epochs_200_s": PAPER_200_EPOCHS_S, "hardware": "two NVIDIA TITAN X (paper §4.3)",
                  "per_epoch_s": round(PAPER_200_EPOCHS_S / PAPER_EPOCHS, 2)},
    }
    with tempfile.TemporaryDirectory(prefix="asrn-sriv-scale-") as tmp:
        work = Path(tmp)
        a = time.perf_counter()
        store = synthesize_sriv_store(work / "store", args.num_videos, args.hours, fps, seed=args.seed,
                                      videos_per_part=args.videos_per_part)
        build_s = time.perf_counter() - a
        lengths = sriv_lengths(args.num_videos, args.hours, seed=args.seed)
        shape = store_shape(store)
        result["store"] = {
            **shape, "dims": paper_dims(), "fps": fps, "dtype": "float16", "build_s": round(build_s, 1),
            "float32_in_memory_bytes": shape["steps"] * sum(paper_dims().values()) * 4,
            "lengths_s": {"distribution": f"lognormal sigma {LENGTH_SIGMA}, clipped to {LENGTH_CLIP_S} s, rescaled "
                                          f"to {args.hours} h", "total_h": round(float(lengths.sum()) / 3600, 3),
                          "mean": round(float(lengths.mean()), 2), "median": round(float(np.median(lengths)), 2),
                          "p10": round(float(np.percentile(lengths, 10)), 2),
                          "p90": round(float(np.percentile(lengths, 90)), 2),
                          "min": round(float(lengths.min()), 2), "max": round(float(lengths.max()), 2)},
            "present_rate": PRESENT_RATE, "videos_per_part": args.videos_per_part,
        }
        print(f"store: {shape['videos']} videos, {shape['steps']} steps, {shape['parquet_bytes'] / 1e9:.2f} GB "
              f"in {build_s:.0f} s", flush=True)
        train, read_s = load_train(store)
        print(f"train split: {len(train)} videos read in {read_s:.0f} s", flush=True)
    dims, cpu, runs = paper_dims(), torch.device("cpu"), {}
    for threads, fraction in zip(args.threads, args.fraction, strict=True):
        torch.set_num_threads(threads)
        model = build_model(dims, train, args.seed, cpu)
        optimizer, scheduler = build_optimizer(model, recipe)
        epochs = [run_epoch(model, optimizer, scheduler, train, fraction, args.seed, e, cpu)
                  for e in range(1, args.epochs + 1)]
        last = epochs[-1]
        runs[f"{threads}_threads"] = {
            "threads": torch.get_num_threads(), "fraction_trained": fraction, "epochs": epochs,
            "epoch_s": round(last["train_s"] / fraction, 2),
            "epochs_200_s": round(PAPER_EPOCHS * last["train_s"] / fraction),
            "epochs_200_h": round(PAPER_EPOCHS * last["train_s"] / fraction / 3600, 2),
            "ratio_to_paper_200_epochs": round(PAPER_EPOCHS * last["train_s"] / fraction / PAPER_200_EPOCHS_S, 1),
            "collate_share": round(last["collate_s"] / last["train_s"], 3)}
        print(f"cpu, {threads} thread(s): {runs[f'{threads}_threads']}", flush=True)
    torch.set_num_threads(min(args.threads))
    model = build_model(dims, train, args.seed, cpu)
    optimizer, scheduler = build_optimizer(model, recipe)
    counted = counted_epoch(model, optimizer, scheduler, train, args.seed, 1)
    print(f"counted: {counted['flops'] / 1e12:.2f} TFLOP, {counted['ops']} ops, fit {counted['ops_fit']}", flush=True)
    best = min(runs.values(), key=lambda r: r["epoch_s"])
    collate_s = best["epochs"][-1]["collate_s"] / best["fraction_trained"]
    result["training"] = {
        "recipe": {"name": recipe.name, "hidden": recipe.hidden, "batch_size": recipe.batch_size,
                   "optimizer": recipe.optimizer, "dropout": recipe.dropout},
        "variant": "asrn", "task": TASK, "window": WINDOW, "train_videos": len(train),
        "read_train_split_once_s": round(read_s, 1),
        "cpu_runs": runs,
        "cpu_measured": {
            "best_run": f"{best['threads']}_threads", "epoch_s": best["epoch_s"], "epochs_200_s": best["epochs_200_s"],
            "epochs_200_h": best["epochs_200_h"], "paper_epochs_200_s": PAPER_200_EPOCHS_S,
            "ratio_to_paper": best["ratio_to_paper_200_epochs"],
            "note": "epoch = train_s of the last timed epoch (collate + forward + backward + SGD step, the store "
                    "already in memory), divided by fraction_trained; x 200 for the 200 epochs",
        },
        "counted_epoch": counted,
        "h100_projection": gpu_training_projection(
            counted, collate_s, resident_batches(np.array([-(-v.num_steps // WINDOW) for v in train]), args.seed)),
    }
    if args.device != "cpu":
        device = torch.device(args.device)
        model = build_model(dims, train, args.seed, device)
        optimizer, scheduler = build_optimizer(model, recipe)
        gpu_epochs = [run_epoch(model, optimizer, scheduler, train, 1.0, args.seed, e, device)
                      for e in range(1, args.epochs + 1)]
        result["gpu_measured"] = {"device": torch.cuda.get_device_name(device), "epochs": gpu_epochs,
                                  "epochs_200_s": round(PAPER_EPOCHS * gpu_epochs[-1]["train_s"], 1)}
    del train
    if not args.skip_extract:
        width, height = (int(v) for v in args.extract_size.split("x"))
        steps = round(args.hours * 3600 * fps)
        with tempfile.TemporaryDirectory(prefix="asrn-sriv-scale-videos-") as tmp:
            cpu_stage = measure_cpu_stage(Path(tmp), args.extract_videos, (width, height), args.extract_src_fps,
                                          args.extract_seconds, fps)
        print(f"cpu stage: {cpu_stage}", flush=True)
        torch.set_num_threads(max(args.threads))  # large convolutions: every thread helps
        encoders = measure_encoders(args.encoder_batch, 2)
        print(f"encoders: {encoders}", flush=True)
        result["extraction"] = {
            "preset": "paper", "fps": fps, "hours": args.hours, "cpu_stage": cpu_stage, "encoders": encoders,
            "h100_projection": extraction_projection(cpu_stage, encoders, steps,
                                                     [int(v) for v in args.cores.split(",") if v]),
        }
    result["summary"] = summary(result)
    result["load_average_end"], result["wall_seconds"] = load(), round(time.perf_counter() - started, 1)
    write_results(args.out, result)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
