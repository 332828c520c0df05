"""The one owner of `ray.init` / `ray.shutdown` for the commands: join a running Ray or start a local one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import ray

from asrn.console import quiet_ray_console, ray_runtime_env


@contextmanager
def ray_session(address: str | None, verbose: bool = False) -> Iterator[None]:
    """Connect to `address` (or start a local Ray) unless Ray is already up; shut down only what we started.

    Unless `verbose`, Ray's routine lines stay off the console of this process and of the job's workers
    (asrn.console); a session already up keeps the console it was started with.
    """
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, runtime_env=ray_runtime_env(verbose))
        quiet_ray_console(not verbose)
    try:
        yield
    finally:
        if started:
            ray.shutdown()
