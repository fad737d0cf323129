"""The "limit": a minimal socket-to-file receiver speaking just enough tus for the bench.

One thread per connection, ``recv_into`` one 1 MiB buffer, ``pwrite`` straight from it,
writeback started (and the page cache dropped behind) every 8 MiB and ``fsync`` before
each answer (both as uploadsvc does, with UPLOADSVC_FSYNC=1). No framework, no registry,
no locks, no validation beyond what it needs: what a Python server on this machine can
do at best. Routes: POST /files/ (201 + Location), PATCH /files/<id> (Content-Length or
chunked body at Upload-Offset; 204 + Upload-Offset), HEAD /files/<id> (200 +
Upload-Offset: the file's size), DELETE /files/<id> (204).

    python bench/limit_server.py PORT DATA_DIR
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import threading
from collections import deque
from pathlib import Path

BUFFER = 1024 * 1024
WRITEBACK_STEP = 8 * 1024 * 1024
WRITEBACK_WINDOW = 8


class Closed(Exception):
    pass


class Reader:
    """The connection's bytes through one reused buffer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray(BUFFER)
        self.view = memoryview(self.buf)
        self.start = 0
        self.end = 0
        self.written_back = 0  # the file position up to which writeback was started
        self.steps: deque[int] = deque(maxlen=WRITEBACK_WINDOW)  # where recent steps began

    def _fill(self) -> None:
        if self.start == self.end:
            self.start = self.end = 0
        elif self.end == len(self.buf):
            size = self.end - self.start
            self.view[:size] = self.view[self.start : self.end]
            self.start, self.end = 0, size
        received = self.sock.recv_into(self.view[self.end :])
        if not received:
            raise Closed()
        self.end += received

    def line(self, terminator: bytes = b"\r\n") -> bytes:
        while True:
            idx = self.buf.find(terminator, self.start, self.end)
            if idx >= 0:
                line = bytes(self.buf[self.start : idx])
                self.start = idx + len(terminator)
                return line
            if self.end - self.start > 64 * 1024:
                raise Closed()
            self._fill()

    def copy_to(self, fd: int, position: int, count: int) -> int:
        """Write the next ``count`` body bytes to ``fd`` at ``position``."""
        while count > 0:
            if self.start == self.end:
                self.start = self.end = 0
                want = min(count, len(self.buf))
                received = self.sock.recv_into(self.view[:want])
                if not received:
                    raise Closed()
                self.end = received
            n = min(count, self.end - self.start)
            written = os.pwrite(fd, self.view[self.start : self.start + n], position)
            self.start += written
            position += written
            count -= written
            if position - self.written_back >= WRITEBACK_STEP:
                # Start writeback early and drop what is a few steps behind from the page
                # cache, as uploadsvc's FileStore does.
                start = self.steps[0] if self.steps else self.written_back
                os.posix_fadvise(fd, start, position - start, os.POSIX_FADV_DONTNEED)
                self.steps.append(self.written_back)
                self.written_back = position
        return position


def serve(sock: socket.socket, data_dir: Path) -> None:
    reader = Reader(sock)
    try:
        while True:
            head = reader.line(b"\r\n\r\n").decode("latin-1")
            request_line, *lines = head.split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            status, extra = handle(reader, data_dir, method, target, headers)
            sock.sendall(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\n{extra}\r\n".encode("latin-1"))
    except (Closed, OSError):
        pass
    finally:
        sock.close()


def handle(
    reader: Reader, data_dir: Path, method: str, target: str, headers: dict[str, str]
) -> tuple[str, str]:
    upload = data_dir / target.rstrip("/").rsplit("/", 1)[-1]
    if method == "POST":
        upload_id = secrets.token_hex(16)
        (data_dir / upload_id).touch()
        return "201 Created", f"Location: /files/{upload_id}\r\n"
    if not upload.is_file():
        return "404 Not Found", ""
    if method == "HEAD":
        return "200 OK", f"Upload-Offset: {upload.stat().st_size}\r\n"
    if method == "DELETE":
        upload.unlink(missing_ok=True)
        return "204 No Content", ""
    if method != "PATCH":
        return "405 Method Not Allowed", ""
    fd = os.open(upload, os.O_WRONLY)
    try:
        position = reader.written_back = int(headers.get("upload-offset", "0"))
        reader.steps.clear()
        try:
            if "chunked" in headers.get("transfer-encoding", ""):
                while True:
                    size = int(reader.line().split(b";", 1)[0], 16)
                    if size == 0:
                        while reader.line():  # trailers, up to the empty line
                            pass
                        break
                    position = reader.copy_to(fd, position, size)
                    reader.line()  # the CRLF after the chunk's data
            else:
                position = reader.copy_to(fd, position, int(headers.get("content-length", "0")))
        finally:
            os.fsync(fd)  # what arrived is kept, even when the body broke off
    finally:
        os.close(fd)
    return "204 No Content", f"Upload-Offset: {position}\r\n"


def main() -> None:
    port, data_dir = int(sys.argv[1]), Path(sys.argv[2])
    data_dir.mkdir(parents=True, exist_ok=True)
    listener = socket.create_server(("127.0.0.1", port), backlog=512)
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=serve, args=(sock, data_dir), daemon=True).start()


if __name__ == "__main__":
    main()
