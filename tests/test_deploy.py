"""deploy/: the systemd unit and the crontab, read lightly (no systemd-analyze here).

The unit must name files that exist, settings that validate and stop timeouts that let
gunicorn finish gracefully; the crontab's command must run as written.
"""

from __future__ import annotations

import os
import re
import runpy
import shlex
import subprocess
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest

from uploadsvc.config import PREFIX, Settings

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "uploadsvc.service"
CRONTAB = ROOT / "deploy" / "crontab"
CLEANUP_EVERY_15_MINUTES = "*/15 * * * *"
CRON_FIELDS = 5
# Cron runs jobs with little more than this.
CRON_PATH = "/usr/bin:/bin"


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values in order]}}; systemd keys may repeat (Environment=)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], defaultdict(list))
            continue
        assert current is not None, f"{path}: {raw!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path}: {raw!r} is not key=value"
        current[key.strip()].append(value.strip())
    return sections


def one(section: dict[str, list[str]], key: str) -> str:
    values = section[key]
    assert len(values) == 1, (key, values)
    return values[0]


def unit_environment(service: dict[str, list[str]]) -> dict[str, str]:
    env = {}
    for assignment in service["Environment"]:
        for item in shlex.split(assignment):
            name, _, value = item.partition("=")
            env[name] = value
    return env


def read_crontab(path: Path) -> tuple[dict[str, str], list[str]]:
    """(environment lines, job lines)."""
    env: dict[str, str] = {}
    jobs: list[str] = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if sep and name.strip().isidentifier():
            env[name.strip()] = value.strip()
        else:
            jobs.append(line)
    return env, jobs


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return read_unit(UNIT)["Service"]


def test_unit_runs_gunicorn_from_files_that_exist(service: dict[str, list[str]]) -> None:
    workdir = Path(one(service, "WorkingDirectory"))
    argv = shlex.split(one(service, "ExecStart"))
    program = Path(argv[0])
    # The unit names the install directory; here the repository stands in for it.
    local = ROOT / program.relative_to(workdir)
    assert local == ROOT / ".venv" / "bin" / "gunicorn"
    assert os.access(local, os.X_OK)
    config = argv[argv.index("-c") + 1]
    assert (ROOT / config).is_file()
    module, _, attribute = argv[-1].partition(":")
    assert (ROOT / f"{module}.py").is_file()
    assert attribute == "app"


def test_unit_settings_validate(service: dict[str, list[str]]) -> None:
    env = unit_environment(service)
    assert all(name.startswith(PREFIX) or name == "PYTHONUNBUFFERED" for name in env)
    settings = Settings.from_env(env)  # a bad value would raise ConfigError
    data_dir = env[f"{PREFIX}DATA_DIR"]
    assert str(settings.data_dir) == data_dir
    assert data_dir in one(service, "ReadWritePaths").split()


def test_unit_stops_gracefully_and_is_hardened(service: dict[str, list[str]]) -> None:
    graceful_timeout = runpy.run_path(str(ROOT / "gunicorn.conf.py"))["graceful_timeout"]
    assert int(one(service, "TimeoutStopSec")) > graceful_timeout
    assert one(service, "KillSignal") == "SIGTERM"
    assert one(service, "Restart") == "on-failure"
    assert one(service, "User") not in ("", "root")
    assert one(service, "NoNewPrivileges") == "yes"
    assert one(service, "ProtectSystem") == "strict"


def test_crontab_cleans_up_every_15_minutes_in_the_units_data(
    service: dict[str, list[str]],
) -> None:
    env, jobs = read_crontab(CRONTAB)
    assert len(jobs) == 1
    fields = jobs[0].split(maxsplit=CRON_FIELDS)
    assert " ".join(fields[:CRON_FIELDS]) == CLEANUP_EVERY_15_MINUTES
    command = fields[CRON_FIELDS]
    assert command.startswith(f"cd {one(service, 'WorkingDirectory')} && ")
    assert shlex.split(command.split("&&")[1]) == [
        ".venv/bin/flask",
        "--app",
        "wsgi",
        "cleanup",
    ]
    assert env[f"{PREFIX}DATA_DIR"] == unit_environment(service)[f"{PREFIX}DATA_DIR"]
    Settings.from_env(env)


def test_crontab_command_runs(service: dict[str, list[str]], tmp_path: Path) -> None:
    cron_env, jobs = read_crontab(CRONTAB)
    command = jobs[0].split(maxsplit=CRON_FIELDS)[CRON_FIELDS]
    # As cron would run it, but in this checkout and on a temporary data dir.
    command = command.replace(one(service, "WorkingDirectory"), shlex.quote(str(ROOT)), 1)
    env = {
        **cron_env,
        "PATH": CRON_PATH,
        "HOME": str(tmp_path),
        f"{PREFIX}DATA_DIR": str(tmp_path / "data"),
    }
    env.pop("MAILTO", None)
    for args in ("--dry-run", ""):
        result = subprocess.run(
            [cron_env.get("SHELL", "/bin/sh"), "-c", f"{command} {args}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        # Nothing to do: nothing for cron to mail.
        assert (result.stdout, result.stderr) == ("", "")


@pytest.mark.parametrize("site", ["nginx.conf", "nginx-two-hosts.conf"])
def test_nginx_ends_idle_upstream_connections_before_gunicorn(site: str) -> None:
    """An idle kept-alive connection that gunicorn closes first races nginx's reuse of it
    (a 502 for the client, and the host left out): nginx's timeout must be shorter."""
    text = (ROOT / "deploy" / site).read_text()
    upstream = re.search(r"upstream uploadsvc \{(.*?)\}", text, re.S)
    assert upstream is not None
    assert re.search(r"^\s*keepalive \d+;", upstream.group(1), re.M)
    timeout = re.search(r"^\s*keepalive_timeout (\d+)s;", upstream.group(1), re.M)
    assert timeout is not None, "state it: nginx's default (60 s) is easy to overlook"
    gunicorn = re.search(r"^keepalive = (\d+)$", (ROOT / "gunicorn.conf.py").read_text(), re.M)
    assert gunicorn is not None
    assert int(timeout.group(1)) < int(gunicorn.group(1))


@pytest.mark.parametrize("site", ["nginx.conf", "nginx-two-hosts.conf"])
@pytest.mark.parametrize("path", ["metrics", "healthz", "api/", "admin"])
def test_nginx_keeps_the_operators_paths_internal(site: str, path: str) -> None:
    """/metrics, /healthz, the page's list and the operator view answer only the allow
    lines (tests/live/test_nginx.py checks this against real nginx)."""
    text = (ROOT / "deploy" / site).read_text()
    block = re.search(r"location \^~ /uploads/" + re.escape(path) + r" \{(.*?)\}", text, re.S)
    assert block is not None, f"{site}: no internal location for /uploads/{path}"
    lines = [line.strip() for line in block.group(1).strip().splitlines()]
    assert "deny all;" in lines and lines.index("deny all;") > lines.index("allow 127.0.0.1;")


def test_the_worker_hooks_leave_another_app_alone() -> None:
    """gunicorn reads ./gunicorn.conf.py by default, so another app run from this
    directory (the bench's baseline) gets its worker hooks: they must not fail on an app
    that create_app didn't make (a KeyError there stopped every worker from booting)."""
    from flask import Flask

    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    worker = SimpleNamespace(wsgi=Flask("another"), alive=True, pid=os.getpid())
    conf["post_worker_init"](worker)
    conf["worker_exit"](None, worker)
