"""A simulated run's terminal and its log file.

Everything the libraries print, in every process the run starts (Flower, Ray,
TensorFlow's C++ start-up lines, the sites' ingest), goes to `RUN_DIR/run.log`;
the terminal gets one line per phase and round and the progress bars. With
`verbose`, the terminal gets everything too. The redirection is at the file
descriptors (1 and 2), so output of C++ code and of child processes that inherit
them lands in the log as well.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, TypeVar

from server.run_dir import RUN_LOG

LOG_NAME = RUN_LOG
# log records carrying this attribute are the run's progress lines
# (server code: `log.info(..., extra=PROGRESS)`): the terminal shows them
PROGRESS = {"progress": True}

T = TypeVar("T")
_terminal: IO[str] | None = None  # set while a RunLog is open


class _ProgressHandler(logging.Handler):
    """Writes progress records, as plain lines, to the run's terminal."""

    def __init__(self, say):
        super().__init__(logging.INFO)
        self._say = say
        self._last: logging.LogRecord | None = None
        self.addFilter(lambda record: bool(getattr(record, "progress", False)))

    def emit(self, record: logging.LogRecord) -> None:
        if record is self._last:  # one record met twice: flwr's and the root's
            return
        self._last = record
        self._say(record.getMessage())


class RunLog:
    """`with RunLog(run_dir, verbose) as run: run.say("...")`."""

    def __init__(self, run_dir: Path, verbose: bool = False):
        self.path = Path(run_dir) / LOG_NAME
        self.verbose = verbose
        self._saved: tuple[int, int] | None = None
        self._tee: subprocess.Popen | None = None
        self._handler: _ProgressHandler | None = None
        self.terminal: IO[str] | None = None

    def __enter__(self) -> RunLog:
        global _terminal
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        self.terminal = os.fdopen(os.dup(self._saved[0]), "w", buffering=1)
        if self.verbose:  # the terminal and the file: `tee` reads what we write
            self._tee = subprocess.Popen(
                ["tee", "-a", str(self.path)],
                stdin=subprocess.PIPE,
                stdout=self._saved[0],
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C reaches us, not tee
            )
            target = self._tee.stdin.fileno()
        else:
            # appending: a child process still writing after we close ours
            # (a Ray daemon on its way out) never blocks on a full pipe
            target = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(target, 1)
        os.dup2(target, 2)
        if not self.verbose:
            os.close(target)
        # Python's own streams onto fds 1 and 2, wherever they pointed before
        # (a notebook's or pytest's capture writes elsewhere)
        self._streams = (sys.stdout, sys.stderr)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        _terminal = self.terminal
        self._handler = _ProgressHandler(self._show)
        root = logging.getLogger()
        self._root_level = root.level
        root.setLevel(min(root.level, logging.INFO))  # progress records are INFO
        root.addHandler(self._handler)
        logging.getLogger("flwr").addHandler(self._handler)
        return self

    def _show(self, text: str) -> None:
        """A progress record on the terminal (the log has it from its handler;
        with verbose, so does the terminal)."""
        if not self.verbose and self.terminal is not None:
            self.terminal.write(text + "\n")
            self.terminal.flush()

    def say(self, text: str) -> None:
        """One progress line: on the terminal and in the log."""
        sys.stdout.flush()
        if self.verbose:  # tee shows it
            print(text, flush=True)
            return
        assert self.terminal is not None
        self.terminal.write(text + "\n")
        self.terminal.flush()
        print(text, flush=True)  # fd 1 is the log file

    def __exit__(self, *exc) -> None:
        global _terminal
        for name in ("", "flwr"):
            logging.getLogger(name).removeHandler(self._handler)
        logging.getLogger().setLevel(self._root_level)
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = self._streams
        assert self._saved is not None
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        if self._tee is not None:
            self._tee.stdin.close()
            try:
                self._tee.wait(timeout=5)
            except subprocess.TimeoutExpired:  # a writer outlived the run
                self._tee.kill()
        _terminal = None
        if self.terminal is not None:
            self.terminal.close()


def progress(iterable: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """A progress bar on the run's terminal (none when it is not a terminal,
    e.g. in CI, so a log holds no carriage-return noise)."""
    from tqdm import tqdm

    out = _terminal or sys.stderr
    tty = hasattr(out, "isatty") and out.isatty()
    yield from tqdm(
        iterable,
        desc=desc,
        total=total,
        file=out,
        disable=not tty,
        leave=False,
        unit="patient",
        dynamic_ncols=True,
    )
