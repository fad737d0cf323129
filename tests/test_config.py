"""Settings come from UPLOADSVC_* once; a bad value is one line naming the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from uploadsvc.config import DEFAULT_EXPIRE_AFTER, DEFAULT_MAX_SIZE, ConfigError, Settings

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
