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
