"""``python -m uploadsvc.upload``: the same as the ``uploadsvc-upload`` command."""

from __future__ import annotations

from . import main

raise SystemExit(main())
