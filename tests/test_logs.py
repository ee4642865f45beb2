"""What reaches the console of a local run, and where the rest goes (no Ray started)."""

import logging
import os
import subprocess
import sys

from synth_empathy import logs


def _record(name, level, msg):
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_rays_info_lines_go_to_the_driver_log_and_its_warnings_to_the_console(tmp_path):
    kept = logs.DriverLog()
    console = logs.RayConsoleFilter(kept)
    info = _record("ray.data._internal.execution.streaming_executor", logging.INFO, "Starting execution of Dataset")
    warning = _record("ray.data", logging.WARNING, "Operator is backpressured")
    error = _record("ray", logging.ERROR, "listen_error_messages: gone")
    quiet = _record("ray.data._internal.progress", logging.WARNING, "Progress bars disabled. To enable, set ...")
    assert [console.filter(r) for r in (info, warning, error, quiet)] == [False, True, True, False]

    # Held in memory until the Ray session's folder is known, then written there.
    assert kept.pending == [info, quiet]
    kept.open(str(tmp_path))
    kept.handle(_record("ray.serve", logging.INFO, "Deleting app ['x']"))
    kept.file.flush()
    text = (tmp_path / logs.DRIVER_LOG).read_text()
    assert "Starting execution of Dataset" in text and "Progress bars disabled" in text
    assert "Deleting app" in text and "backpressured" not in text


def _remove_console_filters():
    for name in logs.RAY_CONSOLE_LOGGERS:
        logger = logging.getLogger(name)
        for target in [logger, *logger.handlers]:
            for f in [f for f in target.filters if isinstance(f, logs.RayConsoleFilter)]:
                target.removeFilter(f)


def test_the_console_filter_goes_on_rays_console_handlers_not_its_files(monkeypatch):
    monkeypatch.setattr(logs, "_driver_log", None)
    try:
        logs.quiet_ray_console()
        logs.quiet_ray_console()  # twice: one filter each
        for name in ("ray", "ray.data"):
            handlers = logging.getLogger(name).handlers
            assert any(logs._is_console(h) for h in handlers), name
            for handler in handlers:
                filters = [f for f in handler.filters if isinstance(f, logs.RayConsoleFilter)]
                assert len(filters) == (1 if logs._is_console(handler) else 0), handler
        # Serve replaces its handlers when it is imported: the filter sits on the logger.
        assert sum(isinstance(f, logs.RayConsoleFilter) for f in logging.getLogger("ray.serve").filters) == 1
    finally:
        _remove_console_filters()  # the rest of the test session logs as before


def test_the_placement_group_cleaners_warning_is_logged_once():
    once = logs.Once(logs.PG_CLEANER_WARNING)
    line = logs.PG_CLEANER_WARNING + ". State API may be temporarily unavailable. Continuing to monitor."
    shown = [once.filter(_record(logs.PG_CLEANER_LOGGER, logging.WARNING, line)) for _ in range(5)]
    assert shown == [True, False, False, False, False]
    assert once.filter(_record(logs.PG_CLEANER_LOGGER, logging.WARNING, "Failed to clean up placement group"))


def test_step_lines_of_a_restarted_worker_group_are_not_deduplicated():
    """Ray's driver drops a line another process printed in the last seconds, digits aside:
    after a Ray Train restart every step line of the new workers matched the old ones' and
    vanished (a CI failure of the restart test). With the setting init_ray gives a train
    driver before Ray is imported, Ray's own deduplicator keeps them and still drops others."""
    script = """
import os, sys
from synth_empathy.cluster.ray_init import keep_step_lines
keep_step_lines(os.environ)
from ray._private.ray_logging import stderr_deduplicator as dedup
def shown(pid, line):
    batch = {"ip": "10.0.0.1", "pid": pid, "job": "j", "is_err": True, "lines": [line]}
    return sum(len(b["lines"]) for b in dedup.deduplicate(batch))
step = "12:00:0{} synth-empathy [train] step {}/40 loss 1.2 lr 1e-05"
other = "12:00:0{} some worker line {}"
print(shown(1, step.format(1, 1)), shown(2, step.format(2, 2)), shown(1, other.format(1, 1)), shown(2, other.format(2, 2)))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_DEDUP")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["1", "1", "1", "0"]  # the second step line shown, the second other line dropped


def test_ray_datas_advice_on_the_engine_maps_concurrency_stays_off_the_console():
    # Ray Data warns when a capped map gets fewer blocks than its cap (every small stage:
    # synth_empathy.stages.llm.light_tasks caps the maps around an engine); other warnings pass.
    import warnings

    from synth_empathy.logs import quiet_ray_warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        quiet_ray_warnings()
        warnings.warn(
            "The maximum number of concurrent tasks for 'Map(_preprocess)' is set to 2, but the", stacklevel=1
        )
        warnings.warn("something else", stacklevel=1)
    assert [str(w.message) for w in seen] == ["something else"]
