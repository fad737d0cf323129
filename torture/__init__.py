"""uploadsvc's fault and abuse suite: ``make torture`` (``python -m torture --help``).

Each campaign starts the real server (gunicorn with the shipped gunicorn.conf.py, a real
SQLite file, a temporary data dir), injects faults from a seeded random generator, and
checks that nothing was lost and nobody got in: sha256 of every finished upload, offsets
against the bytes that arrived, 5xx answers, hangs and tracebacks in the server logs.
"""
