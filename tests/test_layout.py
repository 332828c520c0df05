"""The Ray boundary in the layout: only the job modules import Ray; everything else runs in a plain process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import asrn

JOB_MODULES = {"extract", "train", "train_worker", "epoch_logger", "tune", "demo", "ray_session", "scoring"}
LIBRARY_MODULES = sorted(p.stem for p in Path(asrn.__file__).parent.glob("*.py")
                         if p.stem not in JOB_MODULES | {"__init__"})

BLOCK_RAY = """
import importlib, importlib.abc, sys
class NoRay(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"ray is blocked: {name}")
sys.meta_path.insert(0, NoRay())
failed = []
for name in sys.argv[1:]:
    try:
        importlib.import_module(f"asrn.{name}")
    except ImportError as e:
        failed.append(f"{name}: {e}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_only_job_modules_import_ray():
    assert {"predict", "checkpoint", "loop", "cli", "model", "store"} <= set(LIBRARY_MODULES)
    done = subprocess.run([sys.executable, "-c", BLOCK_RAY, *LIBRARY_MODULES], capture_output=True, text=True,
                          cwd=Path(asrn.__file__).parents[1], timeout=300)
    assert done.returncode == 0, f"these modules need Ray:\n{done.stdout}{done.stderr[-2000:]}"


def test_the_blocker_does_catch_a_job_module():
    done = subprocess.run([sys.executable, "-c", BLOCK_RAY, "tune"], capture_output=True, text=True,
                          cwd=Path(asrn.__file__).parents[1], timeout=300)
    assert done.returncode == 1 and "tune: ray is blocked" in done.stdout


def test_the_modules_ray_workers_import_leave_matplotlib_out():
    """Every Train worker, Train controller and trial actor imports asrn.train or asrn.tune to unpickle its
    function: matplotlib (about 2 s per process here) is imported only where a figure is drawn."""
    _assert_imports_leave_out("asrn.train, asrn.train_worker, asrn.epoch_logger, asrn.tune",
                              "m.startswith('matplotlib')")


def _assert_imports_leave_out(modules: str, unwanted: str) -> None:
    """Importing `modules` in a fresh interpreter loads no module `m` for which the expression `unwanted` holds."""
    check = f"import sys, {modules}; print(sorted(m for m in sys.modules if {unwanted}))"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                          cwd=Path(asrn.__file__).parents[1], timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]


def test_the_train_controllers_module_loads_neither_torch_nor_the_model():
    """Ray Train's controller unpickles the epoch logger by reference: it imports asrn.epoch_logger (and Ray Train,
    and asrn.mlflow_runs to log each epoch), not torch or the model, which take seconds and hundreds of MB per
    process."""
    _assert_imports_leave_out("asrn.epoch_logger, asrn.mlflow_runs",
                              "m == 'torch' or m in ('asrn.model', 'asrn.train_worker')")


def test_the_driver_the_worker_loop_and_the_controller_live_in_their_own_modules():
    """Each process's program in the module named for it: Ray pickles the worker loop and the callback by
    reference, so their modules are what those processes import."""
    from asrn.epoch_logger import EpochLogger
    from asrn.train import build_trainer, train
    from asrn.train_worker import train_loop_per_worker

    assert (train.__module__, build_trainer.__module__) == ("asrn.train", "asrn.train")
    assert train_loop_per_worker.__module__ == "asrn.train_worker" and EpochLogger.__module__ == "asrn.epoch_logger"
