"""What `asrn` commands show on the console: the project's own lines, and Ray's routine lines only with --verbose.

Every Ray process logs routine INFO lines that Ray forwards to the driver's console: Ray Train per report ("Reporting
training result ...", "Checkpoint successfully created at ...") and per worker-group start, Ray Data per dataset
execution ("Dataset ... execution finished"). By default they are kept off the console, not out of the logs:
- Ray Train's own loggers log at WARNING on the console (`ray.train.LoggingConfig`, set by asrn.train.build_trainer);
  its system log files keep every level.
- `RayConsoleFilter` sits on the console handlers, not the file handlers, of Ray Data's logger and of the root
  logger (where a Train worker's per-report line goes): in the driver, in every worker process of the job (Ray runs
  `quiet_ray_console` there as the `worker_process_setup_hook` of `ray_runtime_env`), and in each Train worker once
  Ray Train has configured its logging (asrn.train.train_loop_per_worker).
Ray's logs stay on disk under the session folder (/tmp/ray/session_*/logs: ray-data/, train/, worker-*.out/.err).

Ray-free at import: Ray loads this module in every worker process.
"""

from __future__ import annotations

import logging
import os
import warnings

SETUP_HOOK = "asrn.console.quiet_ray_console"  # Ray's worker_process_setup_hook: a function it imports by name
PROGRESS_BARS_OFF = "Progress bars disabled"  # Ray Data's notice, once per process, when its progress bars are off


class RayConsoleFilter(logging.Filter):
    """Drops the INFO (and lower) records of Ray's own loggers, and Ray Data's notice that its progress bars are off;
    every other record passes, warnings and errors of Ray included."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return not str(record.msg).startswith(PROGRESS_BARS_OFF)
        # Ray names most loggers ray.*; a few by their file's path (ray/train/v2/.../context.py logs each report)
        return not (record.name == "ray" or record.name.startswith("ray.") or f"{os.sep}ray{os.sep}" in record.name)


CONSOLE_FILTER = RayConsoleFilter()


def _console_handlers(logger: logging.Logger) -> list[logging.Handler]:
    return [h for h in logger.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


def quiet_ray_console(quiet: bool = True) -> None:
    """Put `CONSOLE_FILTER` on the console handlers of Ray Data's logger and of the root logger in this process, and
    ignore the deprecation warnings Ray's own modules raise (`quiet=False` takes the filter off). Imports ray.data
    first, so that its handlers exist."""
    import ray.data  # noqa: F401 - configures Ray Data's logger and handlers
    from ray.util.annotations import RayDeprecationWarning

    if quiet:  # Ray calling its own deprecated options (e.g. Ray Train's DatasetManager): nothing a user can act on
        warnings.filterwarnings("ignore", category=RayDeprecationWarning, module=r"ray\.")
    for logger in (logging.getLogger("ray.data"), logging.getLogger()):
        for handler in _console_handlers(logger):
            if quiet:
                handler.addFilter(CONSOLE_FILTER)
            else:
                handler.removeFilter(CONSOLE_FILTER)


def ray_runtime_env(verbose: bool) -> dict | None:
    """The job's runtime_env for `ray.init`: the quiet console in every worker process unless `verbose`."""
    return None if verbose else {"worker_process_setup_hook": SETUP_HOOK}
