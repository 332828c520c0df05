"""What runs in Ray Train's controller (one process per run): the epoch logger, its console line and MLflow metrics.

The controller unpickles `EpochLogger` by reference, so it imports this module and nothing of training: no torch,
no model (tests/test_layout.py checks). MLflow is imported in the logger's writer thread, as soon as the controller
has the logger, when a run is logged: the first epoch's line then does not wait for MLflow's imports.

MLflow writes go to one background thread, off the controller's event loop (a slow tracking server would otherwise
hold up its polls of the workers). That thread logs an epoch's metrics and then prints its line, in epoch order, so
the rule of the killed-driver guarantee still holds: an epoch whose line was printed is in MLflow. The last epoch
(the epoch limit, or early stopping by `patience`) and a failure wait until every queued write is done.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

import ray.train

DIVERGED = "diverged"  # a report's key: training stopped on a non-finite loss (the message); the driver raises it
MEASURED_AT = "measured_at"  # a report's key: when its epoch ended (Unix seconds), MLflow's timestamp for its metrics


class EpochLogger(ray.train.UserCallback):
    """Prints each epoch and logs it to MLflow (step = epoch).

    An epoch is logged once: a worker group restarted from its last checkpoint repeats the epochs after it, and a
    resumed run those its killed driver had logged (`logged`, read from MLflow); the first report stands.
    Elapsed time counts from the driver's start; the ETA (to the last epoch; early stopping may come sooner)
    extrapolates the pace since this controller's first report, so that starting the workers does not count.
    """

    def __init__(self, epochs: int, tracking_uri: str | None = None, run_id: str | None = None,
                 logged: set[int] | None = None, patience: int | None = None):
        self.epochs, self.tracking_uri, self.run_id, self.patience = epochs, tracking_uri, run_id, patience
        self.logged = set(logged or ())
        self.started = time.time()  # wall-clock: the controller may run on another node than the driver
        self.first: tuple[float, int] | None = None  # (time, epoch) of the first report seen here
        self._writer: ThreadPoolExecutor | None = None  # made in the controller, on the first MLflow write
        self._pending: list[Future] = []

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_writer": None, "_pending": []}  # a thread does not travel to the controller

    def __setstate__(self, state: dict) -> None:
        """In the controller: start the writer thread and its MLflow imports now, before the first report."""
        self.__dict__.update(state)
        if self.run_id:
            self._pending.append(self._thread().submit(_import_mlflow))

    def _thread(self) -> ThreadPoolExecutor:
        self._writer = self._writer or ThreadPoolExecutor(max_workers=1, thread_name_prefix="asrn-mlflow")
        return self._writer

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        m = metrics[0]  # rank 0's; every worker reports the same validation figures
        epoch, now = int(m["epoch"]), time.time()
        if DIVERGED in m:
            self._in_order(None, f"epoch {epoch}/{self.epochs}: stopped: {m[DIVERGED]}")
            self.flush()
            return
        if epoch in self.logged:
            self._in_order(None, f"epoch {epoch}/{self.epochs}: repeated after a restart (logged before)")
            return
        self.logged.add(epoch)
        self.first = self.first or (now, epoch)
        pace = (now - self.first[0]) / (epoch - self.first[1]) if epoch > self.first[1] else m["epoch_seconds"]
        elapsed, eta = now - self.started, pace * (self.epochs - epoch)
        line = (f"epoch {m['epoch']}/{self.epochs}: train loss {m['train_loss']:.4f}  val loss {m['val_loss']:.4f}  "
                f"val mAP {m['val_map']:.4f}  F1 macro {m['val_f1_macro']:.4f}  "
                f"(train pass {m['epoch_seconds']:.1f} s; elapsed {elapsed:.0f} s, ETA {eta:.0f} s)")
        self._in_order(m, line)
        if self._is_last(m):
            self.flush()

    def after_exception(self, run_context, worker_exceptions) -> None:
        self.flush()

    def _is_last(self, m: dict) -> bool:
        """The run's last report: the epoch limit, or as many epochs without a gain as `patience` allows."""
        epoch = int(m["epoch"])
        stale = epoch - int(m.get("best_epoch", epoch))
        return epoch >= self.epochs or (self.patience is not None and stale >= self.patience)

    def _in_order(self, reported: dict | None, line: str) -> None:
        """Log `reported` to MLflow (when logging), then print `line`: on the writer thread when logging, so both
        keep epoch order and the line never precedes its metrics."""
        if not self.run_id:
            print(line, flush=True)
            return
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(self._thread().submit(self._log_then_print, reported, line))

    def _log_then_print(self, reported: dict | None, line: str) -> None:
        if reported is not None:
            from asrn.mlflow_runs import log_metrics

            log_epoch(self.tracking_uri, self.run_id, reported)
        print(line, flush=True)

    def flush(self) -> None:
        """Wait for every queued MLflow write (and its line); raise the first write's error, if any."""
        pending, self._pending = self._pending, []
        for write in pending:
            write.result()


def _import_mlflow() -> None:
    import mlflow  # noqa: F401 - seconds of imports, off the first epoch's line

    import asrn.mlflow_runs  # noqa: F401


def epoch_metrics(reported: dict) -> dict:
    """An epoch's report as MLflow metrics (the epoch is the step, its end the timestamp)."""
    return {k: v for k, v in reported.items() if k not in ("epoch", MEASURED_AT)}


def log_epoch(tracking_uri: str, run_id: str, reported: dict) -> None:
    """Log an epoch's metrics stamped with the time it ended, not the time of the write: MLflow sorts a metric's
    history by timestamp, so an epoch logged late (from a checkpoint, below) still sits in its place."""
    from asrn.mlflow_runs import log_metrics

    measured = reported.get(MEASURED_AT)
    log_metrics(tracking_uri, run_id, epoch_metrics(reported), step=int(reported["epoch"]),
                timestamp_ms=int(measured * 1000) if measured is not None else None)


def log_unlogged_epochs(tracking_uri: str, run_id: str, history: list[dict]) -> list[int]:
    """Log the epochs of `history` that MLflow lacks; return them.

    A driver killed between an epoch's checkpoint and its MLflow batch leaves that epoch only in the checkpoint,
    and the resumed run starts after it.
    """
    from asrn.mlflow_runs import logged_steps

    logged = logged_steps(tracking_uri, run_id, "train_loss")
    missing = [h for h in history if int(h["epoch"]) not in logged]
    for h in missing:
        log_epoch(tracking_uri, run_id, h)
    return [int(h["epoch"]) for h in missing]
