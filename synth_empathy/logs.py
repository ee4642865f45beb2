"""The job's log format: one line per event, time and the project's name first (the same
in a terminal, a Ray job's log and a Ray Train worker's).

A local run's console holds these lines and little else (:func:`quiet_ray_console`):
Ray's own driver-side lines (Ray Data's "Starting execution" / "Execution plan" pairs,
Serve's client notes, Ray's start-up line) go to ``synth-empathy-driver.log`` in the Ray
session's log folder instead, beside the workers' own logs; their warnings and errors
still reach the console. ``ray.verbose_progress=true`` leaves Ray's console as it is.
"""

from __future__ import annotations

import logging
import os

FORMAT = "%(asctime)s synth-empathy %(message)s"
DATEFMT = "%H:%M:%S"

# Ray's loggers that write to the driver's console: Ray Core's (``ray.init``, and every
# ``ray.*`` logger without handlers of its own: ray.train, ray.tune, ...), Ray Data's and
# Ray Serve's (those two have their own handlers and do not propagate).
RAY_CONSOLE_LOGGERS = ("ray", "ray.data", "ray.serve")

# Warnings of Ray that say nothing a local run's user can act on; kept in the session's
# driver log like the INFO lines.
QUIET_WARNINGS = (
    # Every new local Ray since 2.5x: it made itself a token in ~/.ray; nothing to do.
    "Token authentication is enabled for this Ray cluster",
    # The run turns them off on purpose when the output is not a terminal, and logs its
    # own progress lines instead (synth_empathy.cluster.ray_init.quiet_ray_data_progress).
    "Progress bars disabled",
)

DRIVER_LOG = "synth-empathy-driver.log"

# Python warnings Ray Data raises in the driver about the job's own, deliberate settings:
# the maps around an engine run at most two tasks per replica
# (synth_empathy.stages.llm.light_tasks), and a stage smaller than that many blocks gets
# advice to cut it into more blocks, which it does not need.
QUIET_PY_WARNINGS = (r"The maximum number of concurrent tasks for '.*' is set to",)


def quiet_ray_warnings() -> None:
    """Ignore :data:`QUIET_PY_WARNINGS` in this process (the driver)."""
    import warnings

    for message in QUIET_PY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)


# Ray Train's PlacementGroupCleaner (a detached actor of every Ray Train run) asks Ray's
# state API once a second whether the run's controller is alive; a local Ray of this job
# has no dashboard, so there is no state API, and the actor logs this warning every
# second for the whole run. It says so once per process (:func:`quiet_ray_worker`).
PG_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
PG_CLEANER_WARNING = "Failed to query Ray Train Controller actor state"


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=FORMAT, datefmt=DATEFMT)


def setup_worker_logging() -> None:
    """:func:`setup_logging` in a Ray Train worker, whose root logger Ray Train has
    given a console handler already (``basicConfig`` then does nothing): that handler
    takes the job's format, so the step lines read like the driver's."""
    setup_logging()
    formatter = logging.Formatter(FORMAT, datefmt=DATEFMT)
    for handler in logging.getLogger().handlers:
        if _is_console(handler):
            handler.setFormatter(formatter)
            # Ray's console handler writes through an inner handler in a worker process
            getattr(handler, "plain_handler", handler).setFormatter(formatter)


class DriverLog(logging.Handler):
    """Ray's driver-side records that the console does not show, written to
    :data:`DRIVER_LOG` in the Ray session's log folder once :meth:`open` knows it (the
    records before ``ray.init`` wait in memory until then)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(asctime)s\t%(levelname)s %(name)s -- %(message)s"))
        self.file: logging.Handler | None = None
        self.pending: list[logging.LogRecord] = []
        self.path: str | None = None

    def open(self, logs_dir: str) -> None:
        if self.file is not None:
            return
        self.path = os.path.join(logs_dir, DRIVER_LOG)
        self.file = logging.FileHandler(self.path, delay=True)
        self.file.setFormatter(self.formatter)
        for record in self.pending:
            self.file.handle(record)
        self.pending.clear()

    def emit(self, record: logging.LogRecord) -> None:
        if self.file is not None:
            self.file.handle(record)
        elif len(self.pending) < 1000:
            self.pending.append(record)


class RayConsoleFilter(logging.Filter):
    """On a console handler of Ray's in the driver: lets warnings and errors through
    (but :data:`QUIET_WARNINGS`), and hands everything else to the driver log."""

    def __init__(self, kept: DriverLog):
        super().__init__()
        self.kept = kept

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING and not str(record.msg).startswith(QUIET_WARNINGS):
            return True
        self.kept.handle(record)
        return False


_driver_log: DriverLog | None = None


def quiet_ray_console() -> DriverLog:
    """Keep Ray's INFO lines (and :data:`QUIET_WARNINGS`) off this process's console and
    in the driver log; call before ``ray.init``, then :func:`open_driver_log`. Ray Data's
    and Ray Core's console handlers get the filter; Ray Serve's logger gets it itself,
    because importing ``ray.serve`` replaces its handlers."""
    global _driver_log
    import ray.data  # noqa: F401  (configures the ray.data logger and its console handler)

    if _driver_log is None:
        _driver_log = DriverLog()
    for name in RAY_CONSOLE_LOGGERS:
        logger = logging.getLogger(name)
        targets = [logger] if name == "ray.serve" else [h for h in logger.handlers if _is_console(h)]
        for target in targets:
            if not any(isinstance(f, RayConsoleFilter) for f in target.filters):
                target.addFilter(RayConsoleFilter(_driver_log))
    return _driver_log


def open_driver_log() -> str | None:
    """Start writing the driver log into the running local Ray's session folder; its path."""
    if _driver_log is None:
        return None
    import ray

    node = getattr(ray._private.worker, "_global_node", None)  # the session this driver started
    if node is None:
        return None
    _driver_log.open(node.get_logs_dir_path())
    return _driver_log.path


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


class Once(logging.Filter):
    """Passes the first record whose message starts with ``prefix``, drops its repeats."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            return True
        if self.seen:
            return False
        self.seen = True
        return True


def quiet_ray_worker() -> None:
    """Ray's ``worker_process_setup_hook`` of a local ``train``: runs in every worker
    process of the job (Ray Train's controller, its workers, the PlacementGroupCleaner),
    whose output the driver shows. The cleaner's warning is logged once, not every second.

    The cleaner finds the state API by the Ray address; without ``RAY_ADDRESS`` it looks
    for the Ray instances of the machine, and where there are several (two local jobs,
    a test beside a run) its monitor thread dies with a 30-line traceback on the console
    instead. This job's own address makes it the one warning either way."""
    import ray

    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    logger = logging.getLogger(PG_CLEANER_LOGGER)
    if not any(isinstance(f, Once) for f in logger.filters):
        logger.addFilter(Once(PG_CLEANER_WARNING))
