"""A wheel (``pip install .`` without ``-e``) carries what the server needs at run time:
the migrations, the page's template and its static files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOT_SOURCE: tuple[str, ...] = (
    ".git",
    ".venv",
    "node_modules",
    "build",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
)
NOT_SOURCE += ("var", "bench-results", "torture-results")

# Run from the installed copy only: the checkout must not be on the path.
SMOKE = """
import sys
from pathlib import Path
import uploadsvc
from uploadsvc import close_app, create_app, db

assert Path(uploadsvc.__file__).is_relative_to(sys.argv[1]), uploadsvc.__file__
assert Path(db.MIGRATIONS_DIR).is_relative_to(sys.argv[1]), db.MIGRATIONS_DIR
app = create_app({"DATA_DIR": sys.argv[2], "WEB_UI": "1"})
client = app.test_client()
created = client.post("/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "3"})
assert created.status_code == 201
assert client.get("/").status_code == 200
assert client.get("/static/upload-page.js").status_code == 200
close_app(app)
print("served from the wheel")
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # From a copy: setuptools builds in the source tree (build/, *.egg-info).
    source = tmp_path_factory.mktemp("source") / "uploadsvc"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (found,) = out.glob("uploadsvc-*.whl")
    return found


def test_the_wheel_carries_the_migrations_and_the_page(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    migrations = {
        f"uploadsvc/_migrations/versions/{path.name}"
        for path in (ROOT / "migrations" / "versions").glob("*.py")
    }
    assert migrations
    assert (
        migrations
        | {
            "uploadsvc/_migrations/env.py",
            "uploadsvc/_migrations/script.py.mako",
            "uploadsvc/templates/upload_page.html",
            "uploadsvc/static/upload-page.js",
            "uploadsvc/static/upload-page.css",
        }
        <= names
    )


def test_a_server_installed_from_the_wheel_migrates_and_serves(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    pip_install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
    subprocess.run(
        [*pip_install, "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    result = subprocess.run(
        [sys.executable, "-c", SMOKE, str(site), str(tmp_path / "data")],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "served from the wheel" in result.stdout
