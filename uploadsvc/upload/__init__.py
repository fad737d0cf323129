"""``uploadsvc-upload``: upload files to a tus server with progress, and resume.

    uploadsvc-upload FILE... --endpoint http://127.0.0.1:8080/files/ [--verify]

Also ``python -m uploadsvc.upload``. ``cli`` parses and reports, ``transfer`` uploads one
file (tuspy's uploader plus timeouts, retries and checksums), ``state`` remembers which
upload URL belongs to which file, ``progress`` draws the bar. See ``--help``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]

# The uploader's own dependencies: an install without the ``client`` extra (a server
# host) gets one line saying what to add, not an ImportError.
_CLIENT_MODULES = frozenset({"tusclient", "requests"})


def main(argv: Sequence[str] | None = None) -> int:
    try:
        from .cli import main as run
    except ModuleNotFoundError as error:
        if (error.name or "").partition(".")[0] not in _CLIENT_MODULES:
            raise
        print(
            "uploadsvc-upload: needs tuspy and requests: pip install 'uploadsvc[client]'",
            file=sys.stderr,
        )
        return 2
    return run(argv)
