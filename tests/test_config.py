"""Settings come from UPLOADSVC_* once; a bad value is one line naming the variable."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from uploadsvc import close_app, config, create_app
from uploadsvc.config import (
    DEFAULT_EXPIRE_AFTER,
    DEFAULT_MAX_SIZE,
    ConfigError,
    ServerSettings,
    Settings,
)

ROOT = Path(__file__).resolve().parents[1]


def test_defaults(tmp_path: Path) -> None:
    settings = Settings.from_env({"UPLOADSVC_DATA_DIR": str(tmp_path)})
    assert settings.data_dir == tmp_path
    assert settings.database_url == f"sqlite:///{tmp_path / 'uploadsvc.db'}"
    assert settings.max_size == DEFAULT_MAX_SIZE == 5 * 1024**3
    assert settings.expire_after == DEFAULT_EXPIRE_AFTER
    assert settings.fsync is True


def test_values(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "UPLOADSVC_DATA_DIR": str(tmp_path),
            "UPLOADSVC_DATABASE_URL": "sqlite:////elsewhere.db",
            "UPLOADSVC_MAX_SIZE": "1024",
            "UPLOADSVC_EXPIRE_AFTER": "60",
            "UPLOADSVC_LOCK_TIMEOUT": "0.5",
            "UPLOADSVC_FSYNC": "0",
            "OTHER": "ignored",
        }
    )
    assert settings.database_url == "sqlite:////elsewhere.db"
    assert (settings.max_size, settings.expire_after, settings.lock_timeout) == (1024, 60, 0.5)
    assert settings.fsync is False


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_SIZE", "abc"),
        ("MAX_SIZE", "-1"),
        ("MAX_SIZE", "0"),
        ("MAX_SIZE", "1e9"),
        ("EXPIRE_AFTER", "soon"),
        ("LOCK_TIMEOUT", "nan"),
        ("LOCK_TIMEOUT", "-2"),
        ("LOCK_TIMEOUT", "inf"),
        ("FSYNC", "maybe"),
        ("DATABASE_URL", "mysql://x"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^UPLOADSVC_{name}: ") as caught:
        Settings.from_env({f"UPLOADSVC_{name}": value})
    assert "\n" not in str(caught.value)


def test_gunicorn_refuses_a_bad_value_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "-c",
            "gunicorn.conf.py",
            "-b",
            "127.0.0.1:0",
            "wsgi:app",
        ],
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "UPLOADSVC_DATA_DIR": str(tmp_path),
            "UPLOADSVC_MAX_SIZE": "lots",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "uploadsvc: UPLOADSVC_MAX_SIZE: 'lots' is not an integer" in result.stderr
    assert "Traceback" not in result.stderr


# A deployment installs only the extras it uses (pyproject.toml): a setting that needs a
# missing one says what to install. The package is hidden the way Python itself allows,
# a None in sys.modules, in a fresh interpreter.
MISSING_EXTRA = """
import sys
sys.modules[sys.argv[1]] = None
from uploadsvc.config import ConfigError, Settings
try:
    Settings.from_env({sys.argv[2]: sys.argv[3], "UPLOADSVC_DATA_DIR": sys.argv[4]})
except ConfigError as error:
    print(error)
"""


@pytest.mark.parametrize(
    ("module", "name", "value", "message"),
    [
        (
            "psycopg",
            "UPLOADSVC_DATABASE_URL",
            "postgresql://u@127.0.0.1:5432/db",
            "UPLOADSVC_DATABASE_URL: needs the psycopg package: pip install 'uploadsvc[postgres]'",
        ),
        (
            "boto3",
            "UPLOADSVC_STORE",
            "s3://bucket/prefix",
            "UPLOADSVC_STORE: needs the boto3 package: pip install 'uploadsvc[s3]'",
        ),
    ],
)
def test_a_setting_whose_extra_is_missing_says_what_to_install(
    tmp_path: Path, module: str, name: str, value: str, message: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", MISSING_EXTRA, module, name, value, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HEADER_TIMEOUT", "0"),
        ("HEADER_TIMEOUT", "-1"),
        ("HEADER_TIMEOUT", "nan"),
        ("HEADER_TIMEOUT", "inf"),
        ("HEADER_TIMEOUT", "3601"),
        ("HEADER_TIMEOUT", "soon"),
        ("MIN_RATE", "-1"),
        ("MIN_RATE", "1.5"),
        ("MIN_RATE", str(1024**3 + 1)),
        ("MIN_RATE_WINDOW", "0"),
        ("MIN_RATE_WINDOW", "1e9"),
        ("MIN_RATE_GRACE", "-0.5"),
        ("MIN_RATE_GRACE", "nan"),
        ("MAX_UPLOADS_PER_CLIENT", "-3"),
        ("MAX_UPLOADS_PER_CLIENT", "many"),
        ("MAX_UPLOADS_PER_CLIENT", "1000001"),
    ],
)
def test_slow_client_settings_are_bounded(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^UPLOADSVC_{name}: ") as caught:
        Settings.from_env({f"UPLOADSVC_{name}": value})
    assert "\n" not in str(caught.value)


def test_slow_client_settings(tmp_path: Path) -> None:
    defaults = Settings.from_env({"UPLOADSVC_DATA_DIR": str(tmp_path)})
    assert (defaults.header_timeout, defaults.min_rate, defaults.max_uploads_per_client) == (
        10.0,
        1024,
        32,
    )
    settings = Settings.from_env(
        {
            "UPLOADSVC_DATA_DIR": str(tmp_path),
            "UPLOADSVC_HEADER_TIMEOUT": "0.5",
            "UPLOADSVC_MIN_RATE": "0",
            "UPLOADSVC_MIN_RATE_WINDOW": "2",
            "UPLOADSVC_MIN_RATE_GRACE": "0",
            "UPLOADSVC_MAX_UPLOADS_PER_CLIENT": "0",
        }
    )
    assert (settings.header_timeout, settings.min_rate, settings.max_uploads_per_client) == (
        0.5,
        0,
        0,
    )
    assert (settings.min_rate_window, settings.min_rate_grace) == (2.0, 0.0)


# Every setting, and the hostile values (of 0, -1, abc, 1e12, huge, inf, nan, NUL) it
# legitimately accepts; every other one must be a one-line ConfigError naming it.
HOSTILE_VALUES = ("0", "-1", "abc", "1e12", "1000000000000", "9" * 40, "inf", "nan", "-inf", "\x00")
ACCEPTED: dict[str, frozenset[str]] = {
    "DATA_DIR": frozenset(HOSTILE_VALUES) - {"\x00"},  # all paths, relative to the cwd
    "DATABASE_URL": frozenset(),
    "MAX_SIZE": frozenset({"1000000000000"}),  # 1 TB: fine
    "EXPIRE_AFTER": frozenset(),
    "LOCK_TIMEOUT": frozenset(),
    "FSYNC": frozenset({"0"}),
    "READ_TIMEOUT": frozenset(),
    "CORS_ORIGINS": frozenset(),
    "PROXY_HOPS": frozenset({"0"}),
    "ALLOWED_TYPES": frozenset(),  # none is a MIME pattern
    "HOOKS": frozenset(),
    "WEBHOOK_URL": frozenset(),
    "WEBHOOK_SECRET": frozenset({"9" * 40}),  # 16 characters or more: any will do
    "EVENT_RETENTION": frozenset(),
    "LOG_JSON": frozenset({"0"}),
    "TOMBSTONE_TTL": frozenset(),
    "ORPHAN_GRACE": frozenset(),
    "KEEP_COMPLETED": frozenset(),
    "WEB_UI": frozenset({"0"}),
    "LOCKER": frozenset(),
    "STORE": frozenset(),
    "S3_ENDPOINT_URL": frozenset(),
    "S3_PART_SIZE": frozenset(),
    "WORKERS": frozenset(),
    "THREADS": frozenset(),
    "BIND": frozenset(),
    "HEADER_TIMEOUT": frozenset(),
    "MIN_RATE": frozenset({"0"}),  # off
    "MIN_RATE_WINDOW": frozenset(),
    "MIN_RATE_GRACE": frozenset({"0"}),
    "MAX_UPLOADS_PER_CLIENT": frozenset({"0"}),  # off
    "AUTH": frozenset(),
    "ADMIN_TOKEN": frozenset({"9" * 40}),  # 16 visible characters or more
    "QUOTA_BYTES": frozenset({"1000000000000"}),
    "QUOTA_FILES": frozenset({"1000000000000"}),
    "SEND_104": frozenset({"0"}),
    "STALL_AFTER": frozenset(),
    "ADMIN_WATCHERS": frozenset(),
    "ADMIN_STREAM_SECONDS": frozenset(),
}
SERVER_SETTINGS = frozenset({"WORKERS", "THREADS", "BIND"})


def _parse(name: str, value: str) -> object:
    values = {name: value}
    if name in SERVER_SETTINGS:
        return ServerSettings.from_mapping(values)
    return Settings.from_mapping(values)


def test_the_table_names_every_documented_setting() -> None:
    """A setting added to the README's table without a row here fails: each one gets
    its bounds checked."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| variable | default | meaning |") :].split("\n\n")[0]
    documented = set(re.findall(r"`UPLOADSVC_([A-Z0-9_]+)`", table))
    assert documented <= set(ACCEPTED), documented - set(ACCEPTED)


@pytest.mark.parametrize("value", HOSTILE_VALUES)
@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_every_setting_refuses_hostile_values_in_one_line(name: str, value: str) -> None:
    if value in ACCEPTED[name]:
        _parse(name, value)
        return
    with pytest.raises(ConfigError) as caught:
        _parse(name, value)
    message = str(caught.value)
    assert message.startswith(f"UPLOADSVC_{name}: "), message
    assert message.isprintable() and len(message) < 300, message


@pytest.mark.parametrize("value", ["", " ", "\t", " \n "])
@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_empty_or_blank_means_the_default(name: str, value: str) -> None:
    """``UPLOADSVC_X=`` (an environment file's way to say "not set") is the default."""
    assert _parse(name, value) == _parse(name, "")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_SIZE", str(2**53 + 1)),
        ("EXPIRE_AFTER", str(config.CENTURY + 1)),
        ("TOMBSTONE_TTL", str(config.CENTURY + 1)),
        ("ORPHAN_GRACE", str(config.CENTURY + 1)),
        ("KEEP_COMPLETED", str(config.CENTURY + 1)),
        ("EVENT_RETENTION", str(config.CENTURY + 1)),
        ("LOCK_TIMEOUT", "3601"),
        ("READ_TIMEOUT", "86401"),
        ("READ_TIMEOUT", "1e9999"),
        ("PROXY_HOPS", "17"),
        ("S3_PART_SIZE", str(5 * 1024**3 + 1)),
        ("WORKERS", "257"),
        ("THREADS", "4097"),
        ("THREADS", "0"),
        ("BIND", "127.0.0.1:65536"),
        ("BIND", "127.0.0.1"),
        ("BIND", "[::1]:99999"),
        ("BIND", "host:80 other:81"),
        ("BIND", "unix:"),
    ],
)
def test_upper_bounds(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^UPLOADSVC_{name}: [^\n]*$"):
        _parse(name, value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0.0.0.0:8080", "0.0.0.0:8080"), ("[::1]:0", "[::1]:0"), ("unix:/run/u.sock", None)],
)
def test_bind_forms(value: str, expected: str | None) -> None:
    assert ServerSettings.from_mapping({"BIND": value}).bind == (expected or value)


def test_the_largest_durations_and_sizes_still_serve(tmp_path: Path) -> None:
    """At every upper bound the server works: creation computes its expiry (1e12 s made
    every POST a 500), a PATCH completes, and cleanup's cut-offs compute."""
    app = create_app(
        {
            "DATA_DIR": str(tmp_path),
            "MAX_SIZE": str(config.MAX_BYTES),
            "EXPIRE_AFTER": str(config.CENTURY),
            "TOMBSTONE_TTL": str(config.CENTURY),
            "ORPHAN_GRACE": str(config.CENTURY),
            "KEEP_COMPLETED": str(config.CENTURY),
            "LOCK_TIMEOUT": "3600",
            "READ_TIMEOUT": "86400",
        }
    )
    try:
        client = app.test_client()
        response = client.post("/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "2"})
        assert response.status_code == 201
        assert response.headers["Upload-Expires"]
        response = client.patch(
            response.headers["Location"],
            headers={
                "Tus-Resumable": "1.0.0",
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
            },
            data=b"ab",
        )
        assert response.status_code == 204
        options = client.options("/files/")
        assert options.headers["Tus-Max-Size"] == str(config.MAX_BYTES)
        result = app.test_cli_runner().invoke(args=["cleanup"])
        assert result.exit_code == 0, result.output
    finally:
        close_app(app)


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"UPLOADSVC_WORKERS": "abc"}, "uploadsvc: UPLOADSVC_WORKERS: 'abc' is not an integer"),
        ({"UPLOADSVC_WORKERS": "0"}, "uploadsvc: UPLOADSVC_WORKERS: must be between 1 and 256"),
        ({"UPLOADSVC_THREADS": "-1"}, "uploadsvc: UPLOADSVC_THREADS: must not be negative"),
        ({"UPLOADSVC_BIND": "nowhere"}, "uploadsvc: UPLOADSVC_BIND: 'nowhere' is not HOST:PORT"),
        ({"UPLOADSVC_EXPIRE_AFTER": "1000000000000"}, "uploadsvc: UPLOADSVC_EXPIRE_AFTER: must"),
    ],
)
def test_gunicorn_refuses_bad_server_settings_with_one_line(
    tmp_path: Path, env: dict[str, str], line: str
) -> None:
    """Real gunicorn, as shipped (no -b, no --workers): exits non-zero with one line."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "UPLOADSVC_DATA_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    # gunicorn may say it is starting (settings read in on_starting); ours is one line.
    ours = [text for text in result.stderr.splitlines() if text.startswith("uploadsvc:")]
    assert len(ours) == 1 and ours[0].startswith(line), result.stderr[-2000:]
    assert result.stderr.rstrip("\n").endswith(ours[0]) and "Traceback" not in result.stderr
