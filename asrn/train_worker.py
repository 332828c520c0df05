"""The per-worker training loop of Ray Train (each DDP worker runs `train_loop_per_worker`).

Ray pickles `train_loop_per_worker` by reference, so every Train worker imports this module (and torch, the model,
the loop); the driver (asrn.train) builds its `LoopConfig`. Each epoch: train on this worker's batches, all-reduce
the loss, score val (read whole by every worker, so all take the same early-stopping decision), report to Ray Train
with a checkpoint on rank 0 when val mAP improves, every `checkpoint_every` epochs, and at the last epoch.

Data: with `LoopConfig.store` set, the worker reads its shard of train and all of val itself (asrn.shards); else it
iterates Ray Data's shard of the materialized train dataset and the val dataset.

Fault injection, for tests only: ASRN_FAULT_EXIT="<rank>:<epoch>:<marker file>" makes that worker exit hard
(os._exit) after training that epoch, before reporting it, once (the marker file records that it happened).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch

from asrn.checkpoint import load_training_state, save_training_state
from asrn.console import quiet_ray_console
from asrn.epoch_logger import DIVERGED, MEASURED_AT
from asrn.labels import task_labels
from asrn.loop import NonFiniteLossError, Recipe, build_optimizer, evaluate, shared_score, train_epoch
from asrn.metrics import compute_metrics
from asrn.model import ASRN, ModelConfig
from asrn.sequence import Batch, collate
from asrn.shards import ResidentSplit, read_split, step_rng
from asrn.store import table_to_videos

REPORTED_METRICS = ("epoch", "train_loss", "val_loss", "val_map", "val_f1_macro", "val_f1_micro", "val_acc",
                    "val_subacc")
FAULT_ENV = "ASRN_FAULT_EXIT"


@dataclass
class LoopConfig:
    """What every Ray Train worker needs; built on the driver by `loop_config_for`."""

    task: str
    model: ModelConfig
    recipe: Recipe
    batch_size: int  # per worker
    seed: int  # rank r seeds torch with seed + r after the model's (identical) initialisation
    use_gpu: bool
    input_stats: dict[str, tuple[np.ndarray, np.ndarray]]  # the train split's per-dimension (mean, std)
    checkpoint_every: int
    fault: str | None = None  # FAULT_ENV's value on the driver (tests only)
    verbose: bool = False  # Ray's routine lines on the console too
    store: str | None = None  # direct reads (asrn.shards): the store's URI or absolute path; None: Ray Data's shards
    precision: str = "fp32"  # asrn.loop.PRECISIONS


def _inject_fault(fault: str | None, rank: int, epoch: int) -> None:
    """Exit this worker hard, once, at the rank and epoch that FAULT_ENV names (see the module docstring)."""
    if not fault:
        return
    fault_rank, fault_epoch, marker = fault.split(":", 2)
    if (rank, epoch) == (int(fault_rank), int(fault_epoch)) and not os.path.exists(marker):
        Path(marker).write_text(f"rank {rank} exited at epoch {epoch}\n")
        os._exit(1)


def _batches(iterator, batch_size: int, task: str, device: torch.device, rng: np.random.Generator | None = None,
             **kwargs) -> Iterator[Batch]:
    """Ray Data pyarrow batches -> collated `Batch`es on `device` (the sequence former's ties at random with `rng`),
    made one batch ahead on a thread while the current one trains (Ray Data prefetches the blocks); on a GPU pinned
    and copied without blocking."""
    cuda = device.type == "cuda"

    def ready(table) -> Batch:
        batch = collate(table_to_videos(table), task, rng=rng)  # one collating thread: rng drawn in order
        return batch.pin_memory().to(device, non_blocking=True) if cuda else batch

    tables = iterator.iter_batches(batch_size=batch_size, batch_format="pyarrow", prefetch_batches=2, **kwargs)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="asrn-collate") as collator:
        pending = None
        for table in tables:
            upcoming = collator.submit(ready, table)
            if pending is not None:
                yield pending.result()
            pending = upcoming
        if pending is not None:
            yield pending.result()


def _worker_data(config: LoopConfig, rank: int, device: torch.device) -> tuple[Callable[[int], Iterable[Batch]],
                                                                                list[Batch]]:
    """This worker's train batches per epoch (a function of the epoch) and its val batches (the whole val split).

    Direct reads (`config.store`): its shard of train and all of val read with pyarrow, collated once, resident on
    `device` (asrn.shards). Else Ray Data's shard of the materialized train dataset, shuffled in a local buffer.
    Either way `config.batch_size` videos per step on every worker.
    """
    if config.store:
        world = ray.train.get_context().get_world_size()
        train_split = ResidentSplit.of(read_split(config.store, "train", rank, world), config.task, device,
                                       random_steps=config.recipe.random_steps)
        val = ResidentSplit.of(read_split(config.store, "val"), config.task, device).fixed_batches(config.batch_size)
        return lambda epoch: train_split.epoch_batches(config.batch_size, config.seed, epoch), val
    train_shard = ray.train.get_dataset_shard("train")
    # the val set is small and read whole by every worker: read it once, score it every epoch
    val = list(_batches(ray.train.get_dataset_shard("val"), config.batch_size, config.task, device))
    return lambda epoch: _batches(train_shard, config.batch_size, config.task, device,
                                  step_rng(config.seed + rank, epoch) if config.recipe.random_steps else None,
                                  local_shuffle_buffer_size=4 * config.batch_size,
                                  local_shuffle_seed=config.seed + epoch), val


def _all_reduce_sum(values: list[float]) -> list[float]:
    """Sum over workers (a no-op for one worker)."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64)
    if torch.distributed.get_backend() == "nccl":
        t = t.to(ray.train.torch.get_device())
    torch.distributed.all_reduce(t)
    return t.cpu().tolist()


@dataclass
class Progress:
    """The early-stopping state that travels in every checkpoint."""

    epoch: int = 0
    best_score: float = -1.0
    best_epoch: int = 0
    stale: int = 0
    history: list[dict] = field(default_factory=list)

    def update(self, epoch: int, score: float) -> bool:
        """Record epoch's val score; True when it is the best so far."""
        self.epoch = epoch
        improved = score > self.best_score
        if improved:
            self.best_score, self.best_epoch, self.stale = score, epoch, 0
        else:
            self.stale += 1
        return improved


def rng_state() -> dict:
    """This process's torch random state (dropout masks, ...): CPU and, where there is one, the current GPU."""
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def gathered_rng_states() -> list[dict]:
    """Every rank's `rng_state`, in rank order (a collective: every rank calls it at the same epochs)."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return [rng_state()]
    states: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(states, rng_state())
    return states


def _restore(net, optimizer, scheduler, rank: int) -> Progress:
    """Continue after the last reported epoch (a restarted worker group or `--resume`), random state included,
    else start fresh."""
    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return Progress()
    with checkpoint.as_directory() as folder:
        state = load_training_state(folder)
    net.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if rank < len(state.get("rng") or []):  # a checkpoint of as many ranks (or more) as this group has
        set_rng_state(state["rng"][rank])
    return Progress(state["epoch"], state["best_score"], state["best_epoch"], state["stale"], state["history"])


def _report(metrics: dict, progress: Progress, state: dict | None) -> None:
    """Report the epoch to Ray Train, with a checkpoint folder holding `state` when given (rank 0 only)."""
    if state is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        save_training_state(folder, {**state, **asdict(progress)})
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def train_loop_per_worker(config: LoopConfig) -> None:
    """One Ray Train worker: restore the last checkpoint if any, then train, validate and report each epoch.

    Reports REPORTED_METRICS plus lr, best_epoch, best_val_map, epoch_seconds, train_samples_per_s and
    previous_epoch_cycle_seconds (the previous epoch from start to start: its report and the wait for the controller
    included; NaN on the first).
    """
    quiet_ray_console(not config.verbose)  # after Ray Train configured this worker's logging (asrn.console)
    torch.manual_seed(config.seed)  # the same initial model on every rank (DDP also broadcasts rank 0's)
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    net = ASRN(config.model)
    torch.manual_seed(config.seed + rank)  # each rank its own dropout masks
    # copies: arrays that come out of Ray's object store are read-only, which torch.as_tensor warns about
    net.set_input_stats({m: (np.array(mean), np.array(std)) for m, (mean, std) in config.input_stats.items()})
    model = ray.train.torch.prepare_model(net)  # DDP over gloo (CPU) or NCCL (GPU); `net` stays the plain module
    optimizer, scheduler = build_optimizer(model, config.recipe)
    progress = _restore(net, optimizer, scheduler, rank)
    epoch_batches, val_batches = _worker_data(config, rank, device)
    labels = list(task_labels(config.task))
    if progress.history and (progress.epoch >= config.recipe.epochs or progress.stale >= config.recipe.patience):
        ray.train.report(progress.history[-1])  # resumed after the end: report where it ended (Tune needs one)
        return
    previous = None  # when the previous epoch started: one epoch's whole cycle, report included, is the difference
    for epoch in range(progress.epoch + 1, config.recipe.epochs + 1):
        started = time.perf_counter()
        cycle = started - previous if previous is not None else float("nan")
        previous = started
        try:
            loss_sum, seen = _all_reduce_sum(list(train_epoch(model, epoch_batches(epoch), optimizer, device,
                                                              config.precision, epoch)))
        except NonFiniteLossError as e:  # raised alike on every rank (asrn.loop): all report it, none fails
            ray.train.report({"epoch": epoch, "val_map": float("nan"), "best_val_map": progress.best_score,
                              "best_epoch": progress.best_epoch, DIVERGED: str(e)})
            return
        _inject_fault(config.fault, rank, epoch)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        seconds = time.perf_counter() - started
        val_loss, scores, targets = evaluate(net, val_batches, device, config.precision)
        val = compute_metrics(targets, scores, labels)
        val["map"] = shared_score(val["map"])  # rank 0's: one early-stopping and checkpoint decision for all
        improved = progress.update(epoch, val["map"])
        metrics = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "val_loss": val_loss,
                   **{f"val_{k}": val[k] for k in ("map", "f1_macro", "f1_micro", "acc", "subacc")},
                   "lr": lr, "best_epoch": progress.best_epoch, "best_val_map": progress.best_score,
                   "epoch_seconds": seconds, "train_samples_per_s": seen / seconds,
                   "previous_epoch_cycle_seconds": cycle, MEASURED_AT: time.time()}
        progress.history.append(metrics)
        last = epoch == config.recipe.epochs or progress.stale >= config.recipe.patience
        if improved or last or epoch % config.checkpoint_every == 0:  # the same on every rank (shared score)
            rng = gathered_rng_states()  # every rank's, so that a restart repeats its epochs exactly
            _report(metrics, progress, {"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                                        "scheduler": scheduler.state_dict(), "rng": rng} if rank == 0 else None)
        else:
            _report(metrics, progress, None)
        if progress.stale >= config.recipe.patience:
            break  # early stopping

