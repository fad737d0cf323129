"""Settings: defaults, then ``UPLOADSVC_*`` environment variables, validated once.

Nothing below ``create_app`` reads configuration strings; it gets a frozen ``Settings``.
A bad value raises ``ConfigError`` whose message is one line naming the variable.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PREFIX = "UPLOADSVC_"

MIB = 1024**2
GIB = 1024**3
DEFAULT_MAX_SIZE = 5 * GIB
# An unfinished upload lives a day after its creation or its last successful write:
# long enough to resume after a night's network outage, short enough that abandoned
# partial files don't pile up on a small intranet disk.
DEFAULT_EXPIRE_AFTER = 24 * 60 * 60
# How long a request waits for an upload's lock before answering 423. tus-js-client
# retries 423 after 0, 1, 3 and 5 s, so a few seconds is plenty.
DEFAULT_LOCK_TIMEOUT = 3.0
DEFAULT_DATA_DIR = "var"
# Seconds a PATCH body may go without a single byte before the request ends (bytes
# kept): a client that vanished without closing its connection frees its thread.
DEFAULT_READ_TIMEOUT = 60.0
# Expired and terminated uploads stay as tombstones (their URLs answer 410, not 404) for
# a week, so a client back from a long absence learns its upload is gone, not unknown.
DEFAULT_TOMBSTONE_TTL = 7 * 24 * 60 * 60
# service.create writes the data file before it inserts the row, and the insert may wait
# for SQLite's writer: a young file without a row is normal. An hour is far beyond that.
DEFAULT_ORPHAN_GRACE = 60 * 60
# S3 store (UPLOADSVC_STORE=s3://...): a PATCH body goes to the bucket in parts of this
# size, and an active PATCH holds about one part in memory. S3 wants every part but the
# last to be at least 5 MiB and allows at most 10,000 parts per object, so the part size
# also bounds the largest upload (UPLOADSVC_MAX_SIZE <= 10,000 parts).
MIN_S3_PART_SIZE = 5 * MIB
MAX_S3_PART_SIZE = 5 * GIB
MAX_S3_PARTS = 10_000
DEFAULT_S3_PART_SIZE = 8 * MIB
# UPLOADSVC_DATABASE_URL schemes: SQLite (one host) or PostgreSQL through psycopg 3.
SQLITE_SCHEME = "sqlite"
POSTGRES_SCHEMES = ("postgresql+psycopg", "postgresql")
# UPLOADSVC_LOCKER values: lock files (one host, or a shared volume with flock) or
# PostgreSQL advisory locks (several hosts).
LOCKERS = ("file", "postgres")


class ConfigError(ValueError):
    """A setting has a value uploadsvc can't use; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    max_size: int = DEFAULT_MAX_SIZE
    expire_after: int = DEFAULT_EXPIRE_AFTER
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    # fsync data before acknowledging a PATCH. Turning it off trades durability across
    # power loss for speed; a process crash still loses nothing.
    fsync: bool = True
    read_timeout: float = DEFAULT_READ_TIMEOUT
    # Origins allowed to upload from browsers: exact "scheme://host[:port]" or "*".
    cors_origins: tuple[str, ...] = ()
    # How many proxies in front set X-Forwarded-*; 0 trusts none of those headers.
    proxy_hops: int = 0
    # Operator hooks ("package.module:object") and a webhook URL for post-events.
    hooks: str | None = None
    webhook_url: str | None = None
    # One JSON object per log line instead of text.
    log_json: bool = False
    # Cleanup (``flask cleanup``): seconds a tombstone answers 410 before its row goes,
    # seconds a row-less file must be old before it counts as an orphan, and seconds a
    # completed upload is kept after completion (None: forever).
    tombstone_ttl: int = DEFAULT_TOMBSTONE_TTL
    orphan_grace: int = DEFAULT_ORPHAN_GRACE
    keep_completed: int | None = None
    # The upload page at / and its list of completed uploads (/api/uploads).
    web_ui: bool = False
    # Several hosts (README "Running on several hosts"): per-upload locks in lock files
    # or PostgreSQL advisory locks, and upload bytes under the data dir or in S3
    # (``s3_bucket`` set; ``s3_prefix`` "" or ending in "/").
    locker: str = "file"
    s3_bucket: str | None = None
    s3_prefix: str = ""
    s3_endpoint_url: str | None = None
    s3_part_size: int = DEFAULT_S3_PART_SIZE

    @property
    def postgres(self) -> bool:
        """Whether the registry is on PostgreSQL."""
        return self.database_url.startswith("postgresql")

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def locks_dir(self) -> Path:
        return self.data_dir / "locks"

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Settings:
        """Build from ``{"DATA_DIR": ..., ...}`` (environment names without the prefix)."""
        data_dir = Path(str(values.get("DATA_DIR") or DEFAULT_DATA_DIR)).resolve()
        database_url = _database_url(values, data_dir)
        postgres = not database_url.startswith(SQLITE_SCHEME)
        locker = _choice(values, "LOCKER", LOCKERS, "postgres" if postgres else "file")
        if locker == "postgres" and not postgres:
            raise ConfigError(f"{PREFIX}LOCKER: 'postgres' needs a PostgreSQL DATABASE_URL")
        if postgres:
            _require_extra("DATABASE_URL", "psycopg", "postgres")
        s3_bucket, s3_prefix = _store(values, "STORE")
        if s3_bucket is not None:
            _require_extra("STORE", "boto3", "s3")
        s3_part_size = _s3_part_size(values, "S3_PART_SIZE")
        max_size = _positive_int(values, "MAX_SIZE", DEFAULT_MAX_SIZE)
        if s3_bucket is not None and max_size > MAX_S3_PARTS * s3_part_size:
            raise ConfigError(
                f"{PREFIX}MAX_SIZE: {max_size} needs more than {MAX_S3_PARTS} S3 parts of"
                f" {s3_part_size} bytes; raise {PREFIX}S3_PART_SIZE"
            )
        return cls(
            data_dir=data_dir,
            database_url=database_url,
            max_size=max_size,
            expire_after=_positive_int(values, "EXPIRE_AFTER", DEFAULT_EXPIRE_AFTER),
            lock_timeout=_positive_float(values, "LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT),
            fsync=_boolean(values, "FSYNC", True),
            read_timeout=_positive_float(values, "READ_TIMEOUT", DEFAULT_READ_TIMEOUT),
            cors_origins=_origins(values, "CORS_ORIGINS"),
            proxy_hops=_non_negative_int(values, "PROXY_HOPS", 0),
            hooks=_import_path(values, "HOOKS"),
            webhook_url=_http_url(values, "WEBHOOK_URL"),
            log_json=_boolean(values, "LOG_JSON", False),
            tombstone_ttl=_positive_int(values, "TOMBSTONE_TTL", DEFAULT_TOMBSTONE_TTL),
            orphan_grace=_positive_int(values, "ORPHAN_GRACE", DEFAULT_ORPHAN_GRACE),
            keep_completed=_optional_positive_int(values, "KEEP_COMPLETED"),
            web_ui=_boolean(values, "WEB_UI", False),
            locker=locker,
            s3_bucket=s3_bucket,
            s3_prefix=s3_prefix,
            s3_endpoint_url=_http_url(values, "S3_ENDPOINT_URL"),
            s3_part_size=s3_part_size,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls.from_mapping(
            {key[len(PREFIX) :]: value for key, value in env.items() if key.startswith(PREFIX)}
        )


def _database_url(values: Mapping[str, Any], data_dir: Path) -> str:
    """SQLite, or PostgreSQL through psycopg 3 (``postgresql://`` means the same)."""
    value = _raw(values, "DATABASE_URL")
    if value is None:
        return f"sqlite:///{data_dir / 'uploadsvc.db'}"
    url = str(value).strip()
    scheme, sep, rest = url.partition("://")
    if sep and scheme == SQLITE_SCHEME:
        return url
    if sep and scheme in POSTGRES_SCHEMES and rest:
        return f"{POSTGRES_SCHEMES[0]}://{rest}"
    raise ConfigError(
        f"{PREFIX}DATABASE_URL: use sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB"
    )


def _require_extra(name: str, module: str, extra: str) -> None:
    """A setting whose library is an optional dependency (pyproject.toml's extras) that
    isn't installed: one line saying what to install, not an ImportError at first use."""
    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"{PREFIX}{name}: needs the {module} package: pip install 'uploadsvc[{extra}]'"
        )


def _choice(values: Mapping[str, Any], name: str, choices: tuple[str, ...], default: str) -> str:
    value = _raw(values, name)
    if value is None:
        return default
    text = str(value).strip().lower()
    if text not in choices:
        raise ConfigError(f"{PREFIX}{name}: {value!r} is not one of {', '.join(choices)}")
    return text


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")


def _store(values: Mapping[str, Any], name: str) -> tuple[str | None, str]:
    """``file`` (None, "") or ``s3://BUCKET[/PREFIX]`` (bucket, prefix ending in "/")."""
    value = _raw(values, name)
    if value is None or str(value).strip() == "file":
        return None, ""
    text = str(value).strip()
    bucket, _, prefix = text.removeprefix("s3://").partition("/")
    if not text.startswith("s3://") or not _BUCKET.fullmatch(bucket):
        raise ConfigError(f"{PREFIX}{name}: {text!r} is not 'file' or 's3://BUCKET/PREFIX'")
    prefix = prefix.strip("/")
    if any(not part or part in (".", "..") for part in prefix.split("/") if prefix):
        raise ConfigError(f"{PREFIX}{name}: {text!r} has an empty or dot path segment")
    return bucket, f"{prefix}/" if prefix else ""


def _s3_part_size(values: Mapping[str, Any], name: str) -> int:
    size = _positive_int(values, name, DEFAULT_S3_PART_SIZE)
    if not MIN_S3_PART_SIZE <= size <= MAX_S3_PART_SIZE:
        raise ConfigError(
            f"{PREFIX}{name}: must be between {MIN_S3_PART_SIZE} (5 MiB) and"
            f" {MAX_S3_PART_SIZE} (5 GiB), got {size}"
        )
    return size


def _raw(values: Mapping[str, Any], name: str) -> Any:
    value = values.get(name)
    return None if value is None or value == "" else value


def _positive_int(values: Mapping[str, Any], name: str, default: int) -> int:
    number = _non_negative_int(values, name, default)
    if number == 0:
        raise ConfigError(f"{PREFIX}{name}: must be positive, got 0")
    return number


def _non_negative_int(values: Mapping[str, Any], name: str, default: int) -> int:
    value = _raw(values, name)
    if value is None:
        return default
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{PREFIX}{name}: {value!r} is not an integer") from None
    if number < 0:
        raise ConfigError(f"{PREFIX}{name}: must not be negative, got {number}")
    return number


_ORIGIN = re.compile(r"https?://([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?")


_IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def _import_path(values: Mapping[str, Any], name: str) -> str | None:
    value = _raw(values, name)
    if value is None:
        return None
    text = str(value).strip()
    if not _IMPORT_PATH.fullmatch(text):
        raise ConfigError(f"{PREFIX}{name}: {text!r} is not 'package.module:object'")
    return text


def _http_url(values: Mapping[str, Any], name: str) -> str | None:
    value = _raw(values, name)
    if value is None:
        return None
    text = str(value).strip()
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", text):
        raise ConfigError(f"{PREFIX}{name}: {text!r} is not an http(s) URL")
    return text


def _origins(values: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = _raw(values, name)
    if value is None:
        return ()
    origins = tuple(item.strip().rstrip("/") for item in str(value).split(",") if item.strip())
    for origin in origins:
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise ConfigError(f"{PREFIX}{name}: {origin!r} is not '*' or scheme://host[:port]")
    return origins


def _optional_positive_int(values: Mapping[str, Any], name: str) -> int | None:
    """A positive integer, or None when the variable is unset or empty."""
    if _raw(values, name) is None:
        return None
    return _positive_int(values, name, 0)


def _positive_float(values: Mapping[str, Any], name: str, default: float) -> float:
    value = _raw(values, name)
    if value is None:
        return default
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ConfigError(f"{PREFIX}{name}: {value!r} is not a number") from None
    if not number > 0 or number == float("inf"):
        raise ConfigError(f"{PREFIX}{name}: must be a positive number, got {value!r}")
    return number


def _boolean(values: Mapping[str, Any], name: str, default: bool) -> bool:
    value = _raw(values, name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{PREFIX}{name}: {value!r} is not a boolean (use 1 or 0)")
