"""Settings: defaults, then ``UPLOADSVC_*`` environment variables, validated once.

Nothing below ``create_app`` reads configuration strings; it gets a frozen ``Settings``.
A bad value raises ``ConfigError`` whose message is one line naming the variable.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
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
# Slow clients (README "Slow clients"). A request head must arrive whole within this many
# seconds (of a new connection's accept, of a kept-alive connection's first byte) before a
# thread is given to it; real clients send a head in one packet.
DEFAULT_HEADER_TIMEOUT = 10.0
# A PATCH body slower than MIN_RATE bytes/s, averaged over each MIN_RATE_WINDOW seconds
# after the first MIN_RATE_GRACE seconds, ends (bytes kept; the client resumes). 1 KiB/s
# is far below any real link (a 2G phone does ~10), while a body trickled a byte at a time
# can hold a thread for hours under READ_TIMEOUT alone.
DEFAULT_MIN_RATE = 1024
DEFAULT_MIN_RATE_WINDOW = 20.0
DEFAULT_MIN_RATE_GRACE = 10.0
# Upload bodies one client address may stream at once in one worker: a small share of
# its threads (1,024), so a few addresses can't take a worker, while an office behind
# one NAT address still uploads 32 files at a time per worker.
DEFAULT_MAX_UPLOADS_PER_CLIENT = 32
MAX_SLOW_CLIENT_SECONDS = 3600.0
# An unfinished upload that got no byte for this long is marked stalled; by default the
# minimum rate's window (a body that slow is about to be ended anyway).
DEFAULT_STALL_AFTER = DEFAULT_MIN_RATE_WINDOW
# Event streams (/admin/events) per worker, each holding a thread, and how long one lasts
# before the browser reconnects (EventSource does by itself): a watcher costs a bounded
# number of threads for a bounded time.
DEFAULT_ADMIN_WATCHERS = 4
DEFAULT_ADMIN_STREAM_SECONDS = 300.0
# Expired and terminated uploads stay as tombstones (their URLs answer 410, not 404) for
# a week, so a client back from a long absence learns its upload is gone, not unknown.
DEFAULT_TOMBSTONE_TTL = 7 * 24 * 60 * 60
# service.create writes the data file before it inserts the row, and the insert may wait
# for SQLite's writer: a young file without a row is normal. An hour is far beyond that.
DEFAULT_ORPHAN_GRACE = 60 * 60
# Webhook events delivered (or failed for good) are kept this long for `flask webhooks
# list` and `replay`, then `flask cleanup` deletes them.
DEFAULT_EVENT_RETENTION = 7 * 24 * 60 * 60
# The shortest UPLOADSVC_WEBHOOK_SECRET: one signed request lets anyone who sees it try
# secrets offline, so a short one is a guessable one.
MIN_WEBHOOK_SECRET = 16
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
# UPLOADSVC_AUTH values (README "Access and limits"): anyone may upload (a trusted
# network; hooks may still refuse), or every tus request needs a grant's token or the
# admin token.
AUTH_MODES = ("open", "grants")
# UPLOADSVC_ADMIN_TOKEN: a bearer that passes every check and opens /admin (README "Watching
# it run"), so it must not be guessable.
MIN_ADMIN_TOKEN = 16

# Upper bounds, so that no value starts a server that fails later. Durations are added
# to and taken from today's date (expiry, cleanup cut-offs): a century keeps that well
# inside datetime's range (UPLOADSVC_EXPIRE_AFTER=1e12 made every POST a 500). Sizes
# and offsets travel as JavaScript numbers (tus-js-client, the page's list) and in
# BIGINT columns: 2**53 is exact in both. Waits go to socket and lock timeouts.
CENTURY = 100 * 365 * 24 * 60 * 60
MAX_BYTES = 2**53
MAX_PROXY_HOPS = 16
UPPER_BOUNDS: dict[str, float] = {
    "MAX_SIZE": MAX_BYTES,
    "EXPIRE_AFTER": CENTURY,
    "TOMBSTONE_TTL": CENTURY,
    "ORPHAN_GRACE": CENTURY,
    "KEEP_COMPLETED": CENTURY,
    "EVENT_RETENTION": CENTURY,
    "LOCK_TIMEOUT": 60 * 60,
    "READ_TIMEOUT": 24 * 60 * 60,
    "PROXY_HOPS": MAX_PROXY_HOPS,
}
# For a setting not listed: integers as sizes, numbers as waits in seconds (threading's
# and socket's timeouts overflow near 2**33 s).
DEFAULT_MAX_INT = MAX_BYTES
DEFAULT_MAX_FLOAT = 1e9


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
    # Slow clients: see the defaults above. min_rate 0 and max_uploads_per_client 0 mean off.
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    min_rate: int = DEFAULT_MIN_RATE
    min_rate_window: float = DEFAULT_MIN_RATE_WINDOW
    min_rate_grace: float = DEFAULT_MIN_RATE_GRACE
    max_uploads_per_client: int = DEFAULT_MAX_UPLOADS_PER_CLIENT
    # Origins allowed to upload from browsers: exact "scheme://host[:port]" or "*".
    cors_origins: tuple[str, ...] = ()
    # How many proxies in front set X-Forwarded-*; 0 trusts none of those headers.
    proxy_hops: int = 0
    # Type gate (typegate.py): MIME patterns an upload must be ("image/*"); () is any.
    allowed_types: tuple[str, ...] = ()
    # Operator hooks ("package.module:object") and a webhook URL for post-events.
    hooks: str | None = None
    webhook_url: str | None = None
    # The HMAC key signing webhook requests (delivery.py); None: sent unsigned. Never in
    # a repr: settings may be logged.
    webhook_secret: str | None = field(default=None, repr=False)
    # Seconds webhook events are kept once delivered or failed (flask cleanup).
    event_retention: int = DEFAULT_EVENT_RETENTION
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
    # Access and limits (grants.py, access.py, quota.py): who may use the tus endpoints,
    # the admin's bearer token, and the quota of uploads without a grant (None: none).
    auth: str = "open"
    admin_token: str | None = None
    quota_bytes: int | None = None
    quota_files: int | None = None
    # Resumable Uploads for HTTP: send a 104 (Upload Resumption Supported) interim response
    # with an upload's URL as soon as a creation made it. Only for clients that reach
    # gunicorn directly: a proxy may take the 104 for the final answer (README).
    send_104: bool = False
    # The operator view (/admin): on with admin_token (see the defaults above).
    stall_after: float = DEFAULT_STALL_AFTER
    admin_watchers: int = DEFAULT_ADMIN_WATCHERS
    admin_stream_seconds: float = DEFAULT_ADMIN_STREAM_SECONDS

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
        data_dir = _data_dir(values, "DATA_DIR")
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
            header_timeout=_seconds_within(
                values, "HEADER_TIMEOUT", DEFAULT_HEADER_TIMEOUT, allow_zero=False
            ),
            min_rate=_count_within(values, "MIN_RATE", DEFAULT_MIN_RATE, 1024**3),
            min_rate_window=_seconds_within(
                values, "MIN_RATE_WINDOW", DEFAULT_MIN_RATE_WINDOW, allow_zero=False
            ),
            min_rate_grace=_seconds_within(
                values, "MIN_RATE_GRACE", DEFAULT_MIN_RATE_GRACE, allow_zero=True
            ),
            max_uploads_per_client=_count_within(
                values, "MAX_UPLOADS_PER_CLIENT", DEFAULT_MAX_UPLOADS_PER_CLIENT, 1_000_000
            ),
            cors_origins=_origins(values, "CORS_ORIGINS"),
            proxy_hops=_non_negative_int(values, "PROXY_HOPS", 0),
            allowed_types=_mime_patterns(values, "ALLOWED_TYPES"),
            hooks=_import_path(values, "HOOKS"),
            webhook_url=_http_url(values, "WEBHOOK_URL"),
            webhook_secret=_secret(values, "WEBHOOK_SECRET"),
            event_retention=_positive_int(values, "EVENT_RETENTION", DEFAULT_EVENT_RETENTION),
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
            auth=_choice(values, "AUTH", AUTH_MODES, "open"),
            admin_token=_token(values, "ADMIN_TOKEN"),
            quota_bytes=_optional_positive_int(values, "QUOTA_BYTES"),
            quota_files=_optional_positive_int(values, "QUOTA_FILES"),
            send_104=_boolean(values, "SEND_104", False),
            stall_after=_seconds_within(
                values, "STALL_AFTER", DEFAULT_STALL_AFTER, allow_zero=False
            ),
            admin_watchers=_int_between(values, "ADMIN_WATCHERS", DEFAULT_ADMIN_WATCHERS, 1, 64),
            admin_stream_seconds=_seconds_within(
                values, "ADMIN_STREAM_SECONDS", DEFAULT_ADMIN_STREAM_SECONDS, allow_zero=False
            ),
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls.from_mapping(
            {key[len(PREFIX) :]: value for key, value in env.items() if key.startswith(PREFIX)}
        )


def _data_dir(values: Mapping[str, Any], name: str) -> Path:
    text = str(_raw(values, name) or DEFAULT_DATA_DIR).strip()
    try:
        return Path(text).resolve()
    except (ValueError, OSError) as error:  # a NUL byte, a path too long to resolve
        raise ConfigError(f"{PREFIX}{name}: {_shown(text)} is not a usable path: {error}") from None


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
    if not prefix:
        # Cleanup removes every object under the prefix that isn't a known upload: at
        # the bucket's root, that would be anyone's keys of 8-64 letters and digits.
        raise ConfigError(
            f"{PREFIX}{name}: {text!r} needs a key prefix (s3://BUCKET/PREFIX) that only"
            " uploadsvc writes under"
        )
    return bucket, f"{prefix}/"


def _s3_part_size(values: Mapping[str, Any], name: str) -> int:
    size = _positive_int(values, name, DEFAULT_S3_PART_SIZE)
    if not MIN_S3_PART_SIZE <= size <= MAX_S3_PART_SIZE:
        raise ConfigError(
            f"{PREFIX}{name}: must be between {MIN_S3_PART_SIZE} (5 MiB) and"
            f" {MAX_S3_PART_SIZE} (5 GiB), got {size}"
        )
    return size


def _raw(values: Mapping[str, Any], name: str) -> Any:
    """The value, or None when unset, empty or only whitespace (the default applies: an
    ``UPLOADSVC_X=`` line in an environment file means "not set")."""
    value = values.get(name)
    if isinstance(value, str) and not value.strip():
        return None
    return value


def _positive_int(values: Mapping[str, Any], name: str, default: int) -> int:
    number = _non_negative_int(values, name, default)
    if number == 0:
        raise ConfigError(f"{PREFIX}{name}: must be positive, got 0")
    return number


def _non_negative_int(values: Mapping[str, Any], name: str, default: int) -> int:
    value = _raw(values, name)
    if value is None:
        return default
    text = str(value).strip()
    # Digits only: int() would also take "1_000", "+5" and non-ASCII digits, and a
    # thousand-digit number takes it a while.
    if not re.fullmatch(r"-?[0-9]{1,400}", text):
        raise ConfigError(f"{PREFIX}{name}: {_shown(value)} is not an integer")
    number = int(text)
    if number < 0:
        raise ConfigError(f"{PREFIX}{name}: must not be negative, got {number}")
    _check_upper(name, number, DEFAULT_MAX_INT)
    return number


def _check_upper(name: str, number: float, default: float) -> None:
    limit = UPPER_BOUNDS.get(name, default)
    if number > limit:
        raise ConfigError(f"{PREFIX}{name}: must be at most {_plain(limit)}, got {_plain(number)}")


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() and abs(number) < 1e30 else f"{number:g}"


def _shown(value: Any) -> str:
    """A value quoted for a one-line message, however long or odd."""
    text = repr(str(value))
    return text if len(text) <= 80 else text[:77] + "..."


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


def _secret(values: Mapping[str, Any], name: str) -> str | None:
    """A signing key: at least MIN_WEBHOOK_SECRET characters, never shown in messages."""
    value = _raw(values, name)
    if value is None:
        return None
    text = str(value).strip()
    if len(text) < MIN_WEBHOOK_SECRET:
        raise ConfigError(
            f"{PREFIX}{name}: must be at least {MIN_WEBHOOK_SECRET} characters"
            " (e.g. `openssl rand -hex 32`)"
        )
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


# type/subtype or type/* (RFC 6838 names), or */* for any; typegate.TypeGate reads them.
_MIME_PATTERN = re.compile(
    r"\*/\*|[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/(\*|[a-z0-9][a-z0-9!#$&^_.+-]{0,126})"
)


def _mime_patterns(values: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = _raw(values, name)
    if value is None:
        return ()
    patterns = tuple(item.strip().lower() for item in str(value).split(",") if item.strip())
    for pattern in patterns:
        if not _MIME_PATTERN.fullmatch(pattern):
            raise ConfigError(
                f"{PREFIX}{name}: {_shown(pattern)} is not a MIME type (type/subtype) or"
                " a type/* pattern"
            )
    return patterns


def _optional_positive_int(values: Mapping[str, Any], name: str) -> int | None:
    """A positive integer, or None when the variable is unset or empty."""
    if _raw(values, name) is None:
        return None
    return _positive_int(values, name, 0)


def _token(values: Mapping[str, Any], name: str) -> str | None:
    """A bearer token: at least MIN_ADMIN_TOKEN visible ASCII characters, or None when
    unset or empty. Never shown in a message."""
    value = _raw(values, name)
    if value is None:
        return None
    text = str(value)
    if len(text) < MIN_ADMIN_TOKEN or not re.fullmatch(r"[\x21-\x7e]+", text):
        raise ConfigError(
            f"{PREFIX}{name}: must be at least {MIN_ADMIN_TOKEN} visible ASCII characters"
            " (e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return text


def _positive_float(values: Mapping[str, Any], name: str, default: float) -> float:
    value = _raw(values, name)
    if value is None:
        return default
    text = str(value).strip()
    if not re.fullmatch(r"-?[0-9]{0,400}(\.[0-9]{0,400})?([eE][-+]?[0-9]{1,4})?", text):
        raise ConfigError(f"{PREFIX}{name}: {_shown(value)} is not a number")
    try:
        number = float(text)
    except ValueError:
        raise ConfigError(f"{PREFIX}{name}: {_shown(value)} is not a number") from None
    if not number > 0:
        raise ConfigError(f"{PREFIX}{name}: must be a positive number, got {_shown(value)}")
    _check_upper(name, number, DEFAULT_MAX_FLOAT)
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


def _seconds_within(
    values: Mapping[str, Any], name: str, default: float, *, allow_zero: bool
) -> float:
    """Seconds in (0 or above 0, MAX_SLOW_CLIENT_SECONDS]."""
    value = _raw(values, name)
    if value is None:
        return default
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ConfigError(f"{PREFIX}{name}: {value!r} is not a number of seconds") from None
    low_ok = number >= 0 if allow_zero else number > 0
    if not (low_ok and number <= MAX_SLOW_CLIENT_SECONDS):
        low = "0" if allow_zero else "above 0"
        raise ConfigError(
            f"{PREFIX}{name}: must be from {low} to {MAX_SLOW_CLIENT_SECONDS:g} seconds,"
            f" got {value!r}"
        )
    return number


def _count_within(values: Mapping[str, Any], name: str, default: int, high: int) -> int:
    """An integer from 0 (off) to ``high``."""
    number = _non_negative_int(values, name, default)
    if number > high:
        raise ConfigError(f"{PREFIX}{name}: must be from 0 (off) to {high}, got {number}")
    return number


# gunicorn's own settings (gunicorn.conf.py). A worker holds a few hundred MiB at most and
# a thread an 8 MiB stack reservation: beyond these, a typo, not a plan.
DEFAULT_WORKERS = 2
# Every upload in flight holds a thread, and 1,000 slow uploads on 2 workers land
# unevenly (about 460 and 550 measured), so each worker gets room for all of them at
# once. Threads start only when needed (concurrent.futures), so idle ones cost nothing;
# a busy one about 160 KB (README "Capacity").
DEFAULT_THREADS = 1024
MAX_WORKERS = 256
MAX_THREADS = 4096
DEFAULT_BIND = "127.0.0.1:8080"
_BIND = re.compile(
    r"(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})"
    r"|unix:/\S+|fd://[0-9]{1,9}"
)


@dataclass(frozen=True)
class ServerSettings:
    """``UPLOADSVC_WORKERS``, ``UPLOADSVC_THREADS`` and ``UPLOADSVC_BIND``, checked like
    every other setting: a bad value is one ``ConfigError`` line, not a traceback or a
    server with no worker."""

    workers: int = DEFAULT_WORKERS
    threads: int = DEFAULT_THREADS
    bind: str = DEFAULT_BIND

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ServerSettings:
        return cls(
            workers=_int_between(values, "WORKERS", DEFAULT_WORKERS, 1, MAX_WORKERS),
            threads=_int_between(values, "THREADS", DEFAULT_THREADS, 1, MAX_THREADS),
            bind=_bind(values, "BIND"),
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerSettings:
        env = os.environ if environ is None else environ
        return cls.from_mapping(
            {key[len(PREFIX) :]: value for key, value in env.items() if key.startswith(PREFIX)}
        )


def _int_between(values: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    number = _non_negative_int(values, name, default)
    if not low <= number <= high:
        raise ConfigError(f"{PREFIX}{name}: must be between {low} and {high}, got {number}")
    return number


def _bind(values: Mapping[str, Any], name: str) -> str:
    """``HOST:PORT``, ``[IPV6]:PORT``, ``unix:/PATH`` or ``fd://N``."""
    value = _raw(values, name)
    if value is None:
        return DEFAULT_BIND
    text = str(value).strip()
    match = _BIND.fullmatch(text)
    if match is None or (match.group("port") is not None and int(match.group("port")) > 65535):
        raise ConfigError(
            f"{PREFIX}{name}: {_shown(text)} is not HOST:PORT, [IPV6]:PORT, unix:/PATH or fd://N"
        )
    return text
