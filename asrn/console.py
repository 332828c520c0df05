"""What `asrn` commands show on the console: the project's own lines, and Ray's routine lines only with --verbose.

Every Ray process logs routine INFO lines that Ray forwards to the driver's console: Ray Train per report ("Reporting
training result ...", "Checkpoint successfully created at ...") and per worker-group start, Ray Data per dataset
execution ("Dataset ... execution finished"). By default they are kept off the console, not out of the logs:
- Ray Train's own loggers log at WARNING on the console (`ray.train.LoggingConfig`, set by asrn.train.build_trainer);
  its system log files keep every level.
- `RayConsoleFilter` sits on the console handlers, not the file handlers, of Ray Data's logger and of the root
  logger (where a Train worker's per-report line goes): in the driver, and in each Train worker once Ray Train has
  configured its logging (the worker loop calls `quiet_ray_console`). No `worker_process_setup_hook`: a job
  runtime_env would make every worker that Ray prestarts unusable (asrn.ray_session).
Ray's logs stay on disk under the session folder (/tmp/ray/session_*/logs: ray-data/, train/, worker-*.out/.err).

Ray-free at import: Ray loads this module in every worker process.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

PROGRESS_BARS_OFF = "Progress bars disabled"  # Ray Data's notice, once per process, when its progress bars are off
TOKEN_AUTH_NOTICE = "Token authentication is enabled"  # ray.init's warning on every local start: nothing to act on
TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
MLFLOW_PICKLE_NOTICE = "Saving pytorch model by Pickle"  # asrn.mlflow_model.log_best_model pickles on purpose
# Ray's C++ core worker, once per actor Ray Data starts in a pool: it passes each actor its DataContext and
# transformer by object reference and restarts dead actors (ray-project/ray issue 53727); the references live as long
# as the pipeline, so the restart it warns about works
ACTOR_ARGS_NOTICE = "has constructor arguments in the object store and max_restarts > 0"


class RayConsoleFilter(logging.Filter):
    """Drops the INFO (and lower) records of Ray's own loggers, and Ray Data's notice that its progress bars are off;
    every other record passes, warnings and errors of Ray included."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return not str(record.msg).startswith((PROGRESS_BARS_OFF, TOKEN_AUTH_NOTICE))
        # Ray names most loggers ray.*; a few by their file's path (ray/train/v2/.../context.py logs each report)
        return not (record.name == "ray" or record.name.startswith("ray.") or f"{os.sep}ray{os.sep}" in record.name)


CONSOLE_FILTER = RayConsoleFilter()


def _console_handlers(logger: logging.Logger) -> list[logging.Handler]:
    return [h for h in logger.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


def quiet_ray_console(quiet: bool = True) -> None:
    """Put `CONSOLE_FILTER` on the console handlers of Ray's, Ray Data's and the root logger in this process, and
    ignore the deprecation warnings Ray's own modules raise (`quiet=False` takes the filter off). Imports ray.data
    first, so that its handlers exist."""
    import ray.data  # noqa: F401 - configures Ray Data's logger and handlers
    from ray.util.annotations import RayDeprecationWarning

    if quiet:  # Ray calling its own deprecated options (e.g. Ray Train's DatasetManager): nothing a user can act on
        warnings.filterwarnings("ignore", category=RayDeprecationWarning, module=r"ray\.")
        # asrn.extract bounds its tasks' and actors' retries (max_retries, max_task_retries): Ray 2.60 takes those
        # only as `ray_remote_args`, which it deprecates without a replacement (removed in Ray 2.64)
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=RayDeprecationWarning)
    # ray.init's token notice is filtered on its logger: ray.init replaces the console handlers before it warns
    targets = [logging.getLogger(TOKEN_AUTH_LOGGER)]
    targets += [h for name in ("ray.data", "ray", "") for h in _console_handlers(logging.getLogger(name))]
    for target in targets:
        if quiet:
            target.addFilter(CONSOLE_FILTER)
        else:
            target.removeFilter(CONSOLE_FILTER)


class MlflowNoticeFilter(logging.Filter):
    """Drops MLflow's warning that a model is pickled: asrn pickles its scoring model on purpose, with its code
    beside it (asrn.mlflow_model.log_best_model)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(MLFLOW_PICKLE_NOTICE)


MLFLOW_FILTER = MlflowNoticeFilter()


def quiet_mlflow_console(quiet: bool = True) -> None:
    """MLflow's routine lines off the console unless not `quiet`: system-metrics monitoring's INFO lines (started,
    stopped, no GPU), a new sqlite store's table creation, and the pickle notice. Set on MLflow's loggers by name:
    MLflow need not be imported yet."""
    for name in ("mlflow.system_metrics", "mlflow.store.db.utils"):  # and a new sqlite store's "Creating tables"
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.NOTSET)
    pytorch = logging.getLogger("mlflow.pytorch")
    if quiet:
        pytorch.addFilter(MLFLOW_FILTER)
    else:
        pytorch.removeFilter(MLFLOW_FILTER)


@contextmanager
def stderr_without(notices: tuple[str, ...] = (ACTOR_ARGS_NOTICE,)) -> Iterator[None]:
    """Keep the lines that contain one of `notices` off this process's stderr while inside.

    Ray's C++ core writes to file descriptor 2 directly, where no logging setting reaches, so the descriptor itself
    goes through a pipe that a thread forwards line by line. Enter it after `ray.init`: a process started inside
    would inherit the pipe.
    """
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    console = os.dup(2)
    os.dup2(write_end, 2)
    os.close(write_end)
    wanted = [n.encode() for n in notices]

    def forward() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            pending = b""
            while chunk := pipe.read(65536):
                *lines, pending = (pending + chunk).split(b"\n")
                kept = b"".join(line + b"\n" for line in lines if not any(w in line for w in wanted))
                _write_all(console, kept)
            _write_all(console, pending)

    thread = threading.Thread(target=forward, name="asrn-stderr", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(console, 2)  # closes the pipe's write end: the thread reads to its end and stops
        thread.join(timeout=10)
        if not thread.is_alive():  # else a child holds the pipe: the thread still forwards to `console`
            os.close(console)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]
