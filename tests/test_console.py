"""asrn.console: which lines reach the console by default (Ray's routine INFO lines do not, warnings do), and the
Train controller's epoch line (elapsed time and an ETA that does not count starting the workers). No Ray cluster:
the end-to-end checks are in tests/test_train.py (quiet) and tests/test_tune.py (--verbose)."""

from __future__ import annotations

import logging
import os

import ray

from asrn.console import CONSOLE_FILTER, quiet_ray_console

RAY_DIR = os.path.dirname(ray.__file__)


def _record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, "x.py", 1, message, None, None)


def test_rays_routine_lines_are_dropped_and_the_rest_passes():
    dropped = [
        _record(f"{RAY_DIR}/train/v2/_internal/execution/context.py", logging.INFO,
                "Reporting training result 1: TrainingReport(...)"),  # Ray Train names this logger by its path
        _record("ray.train.v2._internal.execution.storage", logging.INFO, "Checkpoint successfully created at: ..."),
        _record("ray.data._internal.execution.streaming_executor", logging.INFO,
                "Dataset train_1 execution finished in 0.04 seconds"),
        _record("ray.data._internal.progress", logging.WARNING, "Progress bars disabled. To enable, set ..."),
    ]
    kept = [
        _record("ray.data._internal.execution.streaming_executor", logging.WARNING, "the cluster has no free CPU"),
        _record("ray.train", logging.ERROR, "worker group failed"),
        _record("root", logging.INFO, "a print of the training function"),  # Ray Train routes print() here
        _record("asrn.detect", logging.INFO, "no Faster R-CNN weights found"),
    ]
    assert not any(CONSOLE_FILTER.filter(r) for r in dropped)
    assert all(CONSOLE_FILTER.filter(r) for r in kept)


def test_the_filter_sits_on_console_handlers_only_and_comes_off():
    import ray.data  # noqa: F401 - its logger and handlers

    handlers = logging.getLogger("ray.data").handlers
    console = [h for h in handlers if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    files = [h for h in handlers if h not in console]
    assert console and files
    try:
        quiet_ray_console()
        assert all(CONSOLE_FILTER in h.filters for h in console)
        assert not any(CONSOLE_FILTER in h.filters for h in files)  # Ray Data's log file keeps every line
    finally:
        quiet_ray_console(False)
    assert not any(CONSOLE_FILTER in h.filters for h in console)


def test_the_epoch_line_has_elapsed_time_and_an_eta_without_start_up(monkeypatch, capsys):
    import asrn.train
    from asrn.train import EpochLogger

    clock = iter([1000.0, 1060.0, 1070.0, 1080.0])  # start, then three reports 10 s apart after 60 s of start-up
    monkeypatch.setattr(asrn.train.time, "time", lambda: next(clock))
    logger = EpochLogger(epochs=10)
    metrics = {"train_loss": 0.5, "val_loss": 0.6, "val_map": 0.4, "val_f1_macro": 0.2, "epoch_seconds": 8.0}
    for epoch in (1, 2, 3):
        logger.after_report(None, [{**metrics, "epoch": epoch}], None)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("epoch 1/10:") and "elapsed 60 s, ETA 72 s" in lines[0]  # 9 x the epoch's 8 s
    assert "elapsed 70 s, ETA 80 s" in lines[1] and "elapsed 80 s, ETA 70 s" in lines[2]  # 10 s an epoch


def test_rays_deprecation_of_the_retry_arguments_extract_needs_stays_off_the_console():
    import warnings

    from ray.util.annotations import RayDeprecationWarning

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_ray_console()
        warnings.warn("`ray_remote_args` is deprecated and will be removed in Ray 2.64. Use the named remote "
                      "parameters instead.", RayDeprecationWarning, stacklevel=1)  # as Ray Data words it
        warnings.warn("something else Ray deprecates", RayDeprecationWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["something else Ray deprecates"]


def test_rays_core_worker_notice_is_kept_off_stderr_and_everything_else_passes_in_order():
    """Ray's C++ core writes its actor-arguments line to file descriptor 2 itself: the filter works at that level,
    on a separate process's real stderr, and gives the descriptor back afterwards."""
    import subprocess
    import sys

    script = """
import os, sys
from asrn.console import ACTOR_ARGS_NOTICE, stderr_without
with stderr_without():
    os.write(2, b"before\\n")
    os.write(2, ("W1205 core_worker.cc:1] Actor 'MapWorker' " + ACTOR_ARGS_NOTICE + ". See\\n").encode())
    print("from python", file=sys.stderr)
    os.write(2, b"split ")
    os.write(2, b"line\\nno newline at the end")
os.write(2, b"\\nafter\\n")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "before\nfrom python\nsplit line\nno newline at the end\nafter\n"
