"""Gunicorn (or any server process) on a free loopback port: the one harness.

The live tests, torture and bench each keep their own server object (what they log, how
they check it is ready, what they read from it afterwards); this module is the part they
share: a free port, a clean environment, the process started in a session of its own with
its output in a log file, a bounded wait until it answers, and a stop that SIGTERMs and
then SIGKILLs the whole process group (the master and its workers), so a stop that goes
wrong never leaves a worker behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[1]
POLL_INTERVAL = 0.1  # seconds between readiness probes


def free_port(host: str = HOST) -> int:
    """A TCP port nothing listens on right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def clean_env(*, drop: Sequence[str] = (), **extra: str) -> dict[str, str]:
    """This process's environment without any ``UPLOADSVC_*`` setting (nor the names in
    ``drop``), plus ``extra``: a server sees only the settings its caller chose."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("UPLOADSVC_") and key not in drop
    }
    env.update(extra)
    return env


def gunicorn_argv(gunicorn: str | Path, port: int, *options: str) -> list[str]:
    """uploadsvc as shipped: ``gunicorn -c gunicorn.conf.py -b 127.0.0.1:PORT ... wsgi:app``
    (run with the repository as its working directory)."""
    return [str(gunicorn), "-c", "gunicorn.conf.py", "-b", f"{HOST}:{port}", *options, "wsgi:app"]


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log_path: Path,
    cwd: Path = REPO_ROOT,
    append: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session (its own process group), stdout and stderr to
    ``log_path``, stdin from /dev/null."""
    with log_path.open("ab" if append else "wb") as log:
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


class NotReady(RuntimeError):
    """A server exited during start-up or did not answer in time."""


def wait_ready(
    procs: Sequence[subprocess.Popen[bytes]],
    probe: Callable[[], str | None],
    *,
    timeout: float,
    name: str = "server",
    log_tail: Callable[[], str] = lambda: "",
) -> None:
    """Probe every POLL_INTERVAL (bounded by ``timeout``) until ``probe`` returns None.

    ``probe`` returns what it saw when not ready yet; an OSError from it counts as not
    ready. A process of ``procs`` that exits first fails at once. ``log_tail`` adds the
    server's recent output to the error."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    for _ in range(int(timeout / POLL_INTERVAL) + 1):
        for proc in procs:
            if proc.poll() is not None:
                raise NotReady(
                    f"{name} exited with {proc.returncode} during start-up:\n{log_tail()}"
                )
        try:
            seen = probe()
        except OSError as error:
            seen = repr(error)
        if seen is None:
            return
        last = seen
        if time.monotonic() > deadline:
            break
        time.sleep(POLL_INTERVAL)
    raise NotReady(f"{name} not ready within {timeout:g} s ({last}):\n{log_tail()}")


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``proc``'s process group (it leads one: see ``spawn``), if any is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def terminate(proc: subprocess.Popen[bytes], *, group: bool = False) -> None:
    """SIGTERM ``proc`` (gunicorn's master stops its workers gracefully), or its whole
    process group with ``group``; nothing if it has already exited."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)


def stop(proc: subprocess.Popen[bytes], timeout: float, *, group: bool = False) -> None:
    """SIGTERM (see ``terminate``), wait up to ``timeout`` s, then SIGKILL the process
    group and reap the process."""
    terminate(proc, group=group)
    wait_or_kill(proc, timeout)


def wait_or_kill(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait up to ``timeout`` s for an already signalled ``proc``; then SIGKILL its
    process group and reap it."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        proc.wait(timeout=timeout)
