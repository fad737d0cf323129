"""The servers under test: how each starts, where its data lands, how it stops."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpclient as hc
from proctree import tree_pids
from settings import BENCH, BIN, REPO, GiB, log

# `python bench/run.py` puts bench/ on the path, not the repository: testsupport lives there.
sys.path.insert(0, str(REPO))
from testsupport import server as harness
from testsupport.server import clean_env, free_port


@dataclass
class Target:
    name: str
    port: int
    files_path: str  # where POST goes: "/files/"
    data_files: Path  # where the uploads' data files land
    commands: list[tuple[list[str], dict[str, str], Path]]  # (argv, env, cwd), started in order
    log_path: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    note: str = ""

    def start(self) -> None:
        for argv, env, cwd in self.commands:
            proc = harness.spawn(argv, env=env, log_path=self.log_path, cwd=cwd, append=True)
            self.procs.append(proc)

        def probe() -> str | None:
            try:
                with hc.Connection("127.0.0.1", self.port, timeout=2) as conn:
                    response = conn.request("HEAD", self.files_path + "0" * 32, hc.tus())
            except hc.HTTPError as error:
                return repr(error)
            if response.status < 500:  # nginx answers 502 until gunicorn is up
                return None
            return f"HEAD answered {response.status}"

        harness.wait_ready(
            self.procs, probe, timeout=30, name=self.name, log_tail=lambda: f"see {self.log_path}"
        )

    def pids(self) -> list[int]:
        return [pid for proc in self.procs for pid in tree_pids(proc.pid)]

    def stop(self) -> None:
        # Every process group at once, then wait for each (SIGKILL after 20 s).
        for proc in reversed(self.procs):
            harness.terminate(proc, group=True)
        for proc in reversed(self.procs):
            harness.wait_or_kill(proc, 20)

    def data_file(self, path: str) -> Path:
        return self.data_files / path.rstrip("/").rsplit("/", 1)[-1]


def limit_target(work: Path) -> Target:
    port, data = free_port(), work / "limit"
    argv = [sys.executable, str(BENCH / "limit_server.py"), str(port), str(data)]
    return Target("limit", port, "/files/", data, [(argv, clean_env(), REPO)], work / "limit.log")


# The naive app's server, as issue 15 measured it: gunicorn's own gthread worker, 2 workers
# x 8 threads, what a Flask shop writes in its first systemd unit.
BASELINE_WORKERS, BASELINE_THREADS = 2, 8


def baseline_target(work: Path) -> Target:
    """bench/baseline_app.py under stock gunicorn. Run from bench/, where no
    gunicorn.conf.py is: uploadsvc's worker class, threads and hooks don't apply."""
    port, data = free_port(), work / "baseline"
    argv = [str(BIN / "gunicorn"), "-k", "gthread", "-w", str(BASELINE_WORKERS)]
    argv += ["--threads", str(BASELINE_THREADS), "--keep-alive", "75", "--no-control-socket"]
    argv += ["-b", f"127.0.0.1:{port}", "baseline_app:app"]
    env = clean_env(BENCH_DATA_DIR=str(data))
    note = f"gunicorn's gthread worker, {BASELINE_WORKERS}x{BASELINE_THREADS}, keep-alive 75 s"
    return Target(
        "baseline", port, "/files/", data, [(argv, env, BENCH)], work / "baseline.log", note=note
    )


def uploadsvc_command(
    work: Path, name: str, port: int, tree: Path = REPO, **env: str
) -> tuple[list[str], dict[str, str], Path]:
    argv = [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{port}", "wsgi:app"]
    environ = clean_env(
        UPLOADSVC_DATA_DIR=str(work / name),
        UPLOADSVC_FSYNC="1",
        UPLOADSVC_MAX_SIZE=str(64 * GiB),
        **env,
    )
    return argv, environ, tree


def uploadsvc_target(work: Path, name: str = "uploadsvc", tree: Path = REPO, **env: str) -> Target:
    """uploadsvc as shipped; ``tree``: another checkout of it (``--also``); ``env``:
    settings changed from the shipped ones."""
    port = free_port()
    command = uploadsvc_command(work, name, port, tree, **env)
    note = "" if tree == REPO else f"uploadsvc from {tree}"
    return Target(
        name, port, "/files/", work / name / "files", [command], work / f"{name}.log", note=note
    )


def nginx_target(work: Path, site: Path) -> Target | str:
    """uploadsvc behind ``site`` (deploy/nginx.conf), or why not."""
    if not site.exists():
        return f"{site.relative_to(REPO) if site.is_relative_to(REPO) else site} absent"
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if nginx is None:
        log("nginx not found: installing it (apt-get install nginx-light)")
        install = subprocess.run(
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive"
            " apt-get install -y -qq nginx-light",
            shell=True,
            check=False,
        )
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if install.returncode != 0 or not Path(nginx).exists():
            return "nginx missing and apt-get could not install it"
    port, upstream = free_port(), free_port()
    prefix = work / "nginx"
    prefix.mkdir()
    text = site.read_text()
    text = text.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{upstream};")
    text = text.replace("listen 80;", f"listen 127.0.0.1:{port};")
    if f"127.0.0.1:{upstream}" not in text or f"127.0.0.1:{port}" not in text:
        return "deploy/nginx.conf: could not set its listen/upstream addresses"
    (prefix / "site.conf").write_text(text)
    user = "user root;\n" if os.geteuid() == 0 else ""
    (prefix / "nginx.conf").write_text(
        f"""{user}worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
    access_log {prefix}/access.log;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/site.conf;
}}
"""
    )
    check = subprocess.run(
        [nginx, "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
        capture_output=True,
        text=True,
        check=False,
    )
    if check.returncode != 0:
        return f"nginx -t failed: {check.stderr.strip()[-300:]}"
    gunicorn = uploadsvc_command(work, "nginx-uploadsvc", upstream, UPLOADSVC_PROXY_HOPS="1")
    nginx_cmd = ([nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf")], clean_env(), prefix)
    return Target(
        "nginx+uploadsvc",
        port,
        "/uploads/files/",
        work / "nginx-uploadsvc" / "files",
        [gunicorn, nginx_cmd],
        work / "nginx.log",
        note=f"{site.name} (listen and upstream ports changed), access log on",
    )


TUS_NODE = BENCH / "tus-node"


def tus_node_target(work: Path) -> Target | str:
    """@tus/server + @tus/file-store under Node (bench/tus_server.mjs), or why not."""
    node = shutil.which("node")
    if node is None:
        return "node not found"
    if not (TUS_NODE / "node_modules" / "@tus" / "server").is_dir():
        return "bench/tus-node not installed (`make bench` runs `npm ci` there)"
    port, data = free_port(), work / "tus-node"
    data.mkdir()
    argv = [node, str(BENCH / "tus_server.mjs"), str(port), str(data)]
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return Target(
        "@tus/server",
        port,
        "/files/",
        data,
        [(argv, clean_env(), REPO)],
        work / "tus-node.log",
        note=f"@tus/server {_npm_version('server')} + @tus/file-store"
        f" {_npm_version('file-store')}, Node {version}, one process; doesn't fsync",
    )


def _npm_version(package: str) -> str:
    manifest = TUS_NODE / "node_modules" / "@tus" / package / "package.json"
    return str(json.loads(manifest.read_text()).get("version", "?"))
