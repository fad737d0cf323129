"""Upload one file with tuspy chunk by chunk, remembering its URL in a FileStorage.

Run by test_resume.py as a separate process so the test can SIGKILL it mid-upload and
start it again. Usage::

    python _tuspy_resume_client.py ENDPOINT FILE STORAGE CHUNK_SIZE

Prints one line per event, flushed at once: ``url <upload url>``, ``start <offset>``
(before the first chunk; > 0 when resuming), ``offset <offset>`` after every chunk and
``done <offset>`` at the end.
"""

from __future__ import annotations

import sys

from tusclient import client
from tusclient.storage import filestorage


def emit(kind: str, value: object) -> None:
    print(f"{kind} {value}", flush=True)


def main(argv: list[str]) -> int:
    endpoint, file_path, storage_path, chunk_size = argv[1], argv[2], argv[3], int(argv[4])
    storage = filestorage.FileStorage(storage_path)
    try:
        # With a URL in storage the uploader resumes: it HEADs the upload for its offset.
        uploader = client.TusClient(endpoint).uploader(
            file_path=file_path,
            chunk_size=chunk_size,
            metadata={"filename": "resume.bin"},
            store_url=True,
            url_storage=storage,
        )
        if uploader.url is None:
            uploader.set_url(uploader.create_url())  # also stores it
            uploader.offset = 0
        emit("url", uploader.url)
        emit("start", uploader.offset)
        size = uploader.get_file_size()
        for _ in range(size // chunk_size + 2):
            if uploader.offset >= size:
                break
            uploader.upload_chunk()
            emit("offset", uploader.offset)
        emit("done", uploader.offset)
        return 0 if uploader.offset == size else 2
    finally:
        storage.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
