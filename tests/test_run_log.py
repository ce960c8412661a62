"""A simulated run's terminal and log file (simulations/run_log.py): the
libraries' output, a child process's included, goes to RUN_DIR/run.log only;
progress lines go to both; --verbose shows everything."""

import logging
import subprocess
import sys

from server.progress import PROGRESS, gan_round_line
from simulations.run_log import LOG_NAME, RunLog


def _chatter() -> None:
    """What the libraries do during a run: print, log, and child processes
    writing straight to the inherited file descriptors."""
    print("library print")
    logging.getLogger("flwr").warning("flower warning")
    subprocess.run(
        [sys.executable, "-c", "import sys; sys.stderr.write('child stderr\\n')"],
        check=True,
    )


def test_quiet_run_keeps_the_terminal_to_progress_lines(tmp_path, capfd):
    # as the CLI's logging.basicConfig and Flower's console handler do: a
    # handler bound to the process's stderr (fd 2) before the run starts
    stderr = open(2, "w", closefd=False)  # noqa: SIM115
    handler = logging.StreamHandler(stderr)
    logging.getLogger("flwr").addHandler(handler)
    try:
        _quiet_run(tmp_path)
    finally:
        logging.getLogger("flwr").removeHandler(handler)
        stderr.close()
    terminal = capfd.readouterr()
    shown = terminal.out + terminal.err
    assert shown.splitlines() == [
        "header line",
        "round 1/2 progress",
        "data: progress",
    ]
    log = (tmp_path / LOG_NAME).read_text()
    for text in ("header line", "library print", "flower warning", "child stderr"):
        assert text in log, text
    # after the run the terminal is the terminal again
    print("after")
    assert capfd.readouterr().out == "after\n"


def _quiet_run(tmp_path) -> None:
    with RunLog(tmp_path, verbose=False) as run:
        run.say("header line")
        _chatter()
        logging.getLogger("flwr").info("round 1/2 progress", extra=PROGRESS)
        logging.getLogger("some.module").info("data: progress", extra=PROGRESS)


def test_verbose_run_shows_everything_and_logs_it_too(tmp_path, capfd):
    with RunLog(tmp_path, verbose=True) as run:
        run.say("header line")
        _chatter()
    shown = "".join(capfd.readouterr())
    log = (tmp_path / LOG_NAME).read_text()
    for text in ("header line", "library print", "child stderr"):
        assert text in shown and text in log, text


def test_a_progress_record_reaches_the_terminal_once(tmp_path, capfd):
    """flwr's logger propagates to the root: the line is shown once, not twice."""
    flwr = logging.getLogger("flwr")
    before = flwr.propagate
    flwr.propagate = True
    try:
        with RunLog(tmp_path):
            flwr.info("once", extra=PROGRESS)
    finally:
        flwr.propagate = before
    assert capfd.readouterr().out.count("once") == 1


def test_round_line_names_round_time_losses_and_bytes():
    entry = {"round": 2, "sites": 2, "d_loss": 5.2, "e_loss": 1.234, "g_loss": 0.9}
    line = gan_round_line(entry, 5, 41.4, 5.07e6)
    assert line.startswith("round 2/5")
    for part in ("41 s", "D 5.20", "E 1.23", "G 0.90", "5.1 MB up per site"):
        assert part in line, part
    assert "clipped" not in line
    dp = gan_round_line({"round": 1, "sites": 3, "clipped": 7}, 12, 3.0, 1e6)
    assert dp.startswith("round  1/12") and "D " not in dp and "7 values clipped" in dp
