"""``uploadsvc-upload``: upload files to a tus server with progress, and resume.

    uploadsvc-upload FILE... --endpoint http://127.0.0.1:8080/files/ [--verify]

Also ``python -m uploadsvc.upload``. ``cli`` parses and reports, ``transfer`` uploads one
file (tuspy's uploader plus timeouts, retries and checksums), ``state`` remembers which
upload URL belongs to which file, ``progress`` draws the bar. See ``--help``.
"""

from __future__ import annotations

from .cli import main

__all__ = ["main"]
