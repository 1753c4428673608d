"""-D/--daemon: detach, and report start-up success or failure to the caller.

The command that starts a daemon must not return 0 for a server that then
fails to bind or to boot. So the original process waits on a pipe: the
detached master's stderr is that pipe until its first workers are READY, so
every start-up error is shown by the command itself, followed by its exit code.
"""

from __future__ import annotations

import logging
import os
import sys

from greenfork.master import logs

READY = b"\0greenfork:ready\n"
EXIT = b"\0greenfork:exit:"


class StderrEcho(logging.Handler):
    """Errors written to stderr too, while the starting command reads it: with
    --error-logfile they would otherwise reach only the file. Workers forked meanwhile
    inherit it; once the command has returned, a write fails and it goes quiet."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.setFormatter(logging.Formatter(logs.FORMAT, logs.DATEFMT))
        self.quiet = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.quiet:
            return
        try:
            os.write(2, (self.format(record) + "\n").encode(errors="backslashreplace"))
        except OSError:
            self.quiet = True
        except Exception:
            self.handleError(record)


class Detached:
    """In the daemon: tells the waiting command the outcome, once."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.echo: StderrEcho | None = None

    def echo_errors(self) -> None:
        self.echo = StderrEcho()
        logging.getLogger("greenfork").addHandler(self.echo)

    def _say(self, message: bytes) -> None:
        if self.fd < 0:
            return
        if self.echo is not None:
            logging.getLogger("greenfork").removeHandler(self.echo)
            self.echo = None
        sys.stderr.flush()
        try:
            os.write(self.fd, message)
        except OSError:
            pass
        # From now on nobody reads stderr: point it at /dev/null (a configured
        # --error-logfile is a file and is unaffected).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        os.close(self.fd)
        self.fd = -1

    def ready(self) -> None:
        self._say(READY)

    def exited(self, code: int) -> None:
        self._say(EXIT + str(code).encode() + b"\n")


def wait_for_daemon(fd: int) -> int:
    """In the starting command: relay the daemon's start-up output; its verdict."""
    buf = b""
    while chunk := os.read(fd, 4096):
        buf += chunk
        if READY in buf:
            sys.stderr.buffer.write(buf.split(READY)[0])
            return 0
    text, _, code = buf.partition(EXIT)
    sys.stderr.buffer.write(text)
    sys.stderr.flush()
    try:
        return int(code.strip() or b"1") or 1
    except ValueError:
        return 1


def daemonize() -> Detached:
    """Double fork and setsid. Returns only in the daemon; the caller exits with the verdict."""
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork() > 0:
        os.close(w)
        os._exit(wait_for_daemon(r))
    os.close(r)
    os.setsid()  # no controlling terminal: a closed ssh session's HUP never reaches us
    if os.fork() > 0:
        os._exit(0)  # the session leader exits, so the daemon can never reacquire a terminal
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(w, 2)
    os.close(devnull)
    os.close(w)
    return Detached(os.dup(2))
