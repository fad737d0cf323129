"""The hostile campaign's requests: a valid tus request for a modelled upload, or one
mutated into something hostile."""

from __future__ import annotations

import hashlib
import random
from urllib.parse import quote

from ...server import Server
from ...wire import KiB, MiB
from .model import (
    BAD_CHECKSUMS,
    BAD_METADATA,
    CONTENT_TYPES,
    FORGED,
    METHODS,
    NUMBERS,
    ODD_METHODS,
    OVERRIDES,
    TUS_RESUMABLE,
    Req,
    Upload,
    b64,
    nasty_metadata,
)


class Generator:
    def __init__(self, rng: random.Random, server: Server, canary: int, marker: str) -> None:
        self.rng = rng
        self.port = server.port
        self.canary = canary
        self.marker = marker  # a name that must never appear as a file anywhere

    def number(self, good: int | None) -> str:
        if good is not None and self.rng.random() < 0.4:
            return str(good)
        return self.rng.choice(NUMBERS)

    def target(self, upload_id: str | None) -> tuple[bytes, bool]:
        """A hostile request target; (target, well_formed)."""
        rng = self.rng
        some = upload_id or rng.randbytes(16).hex()
        lookalike = (
            some[:5] + rng.choice(["\u0430", "\u0435", "\uff10", "\uff46", "\u0131"]) + some[6:]
        )
        choices: list[tuple[str | bytes, bool]] = [
            (f"/files/{some}", True),
            (f"/files/{some.upper()}", True),
            (f"/files/{some}/", True),
            (f"/files/{some}/extra", True),
            (f"/files/{some}?x=1&y=%00", True),
            (f"/files/{some}%00", True),
            (f"/files/{some}%2F..%2F..%2Fuploadsvc.db", True),
            (f"/files/{some}.lock", True),
            (f"/files/{quote(lookalike)}", True),
            (f"/files/{lookalike}".encode(), False),
            ("/files/..", True),
            ("/files/../etc/passwd", True),
            ("/files/%2e%2e%2f", True),
            ("/files/%2e%2e%2f%2e%2e%2fetc%2fpasswd", True),
            (f"/files/..%2f..%2f..%2f..%2ftmp%2f{self.marker}", True),
            (f"/files/%2e%2e/%2e%2e/{self.marker}", True),
            ("/files//etc/passwd", True),
            ("/files/%2Fetc%2Fpasswd", True),
            ("//files//", True),
            ("/files/C:%5Cwindows%5Cwin.ini", True),
            ("/files/%00", True),
            (b"/files/\x00" + some.encode(), False),
            ("/files/" + "a" * 4000, True),
            ("/files/" + "%00" * 32, True),
            ("/files/" + "b" * 9000, False),  # over gunicorn's request line limit
            ("/files/locks", True),
            ("/files/uploadsvc.db", True),
            (f"http://evil.invalid/files/{some}", True),  # absolute form
            ("*", True),
            ("/etc/passwd", True),
            ("/files/%ff%fe", True),
            ("/files/\u00fc".encode(), False),
            ("/metrics/../files/", True),
            # Decoded into the request's log line: must stay on it (issue 13).
            (f"/files/{some}%0a{FORGED}%0d%0aINFO%20{FORGED}", True),
            (f"/files/%1b[2K%1b[1G{FORGED}%c2%85{FORGED}%e2%80%a8{FORGED}", True),
            (f"/files/?q=%0a{FORGED}", True),
        ]
        value, ok = rng.choice(choices)
        return (value.encode() if isinstance(value, str) else value), ok

    def concat(self, ids: list[str]) -> str:
        rng = self.rng
        own = rng.choice(ids) if ids else rng.randbytes(16).hex()
        here = f"http://127.0.0.1:{self.port}"
        there = f"127.0.0.1:{self.canary}"
        return rng.choice(
            [
                "partial",
                "final;",
                "final; ",
                "bogus",
                f"final;/files/{own}",
                f"final;/files/{own} /files/{own}",
                f"final;{here}/files/{own}",
                f"final;http://{there}/files/{own}",
                f"final;http://localhost:{self.canary}/files/{own}",
                f"final;//{there}/files/{own}",
                f"final;http://127.0.0.1:{self.port}@{there}/files/{own}",
                f"final;http://{there}#@127.0.0.1:{self.port}/files/{own}",
                f"final;http://{there}/files/../files/{own}",
                f"final;http://[::1]:{self.canary}/files/{own}",
                f"final;ftp://{there}/files/{own}",
                "final;file:///etc/passwd",
                f"final;{here}/files/{own}?next=http://{there}/",
                f"final;http://{there}/files/{own} {here}/files/{own}",
                "final;" + " ".join(f"/files/{own}" for _ in range(300)),
                # Forms urllib refuses with ValueError (they were 500s).
                f"final;http://[zz]/files/{own}",
                f"final;http://[::1/files/{own}",
                f"final;http://127.0.0.1:99999/files/{own}",
                f"final;http://127.0.0.1:-1/files/{own}",
                f"final;http://[127.0.0.1]/files/{own}",
                f"final;http://\uff4c\uff4f\uff43\uff41\uff4c/files/{own}",
            ]
        )

    def forwarded(self) -> list[tuple[bytes, bytes]]:
        rng = self.rng
        options = [
            (b"X-Forwarded-Host", b"evil.invalid"),
            (b"X-Forwarded-Host", f"127.0.0.1:{self.canary}".encode()),
            (b"X-Forwarded-Proto", b"https"),
            (b"X-Forwarded-Proto", b"javascript"),
            (b"X-Forwarded-Prefix", b"/evil"),
            (b"X-Forwarded-Prefix", b"//evil.invalid"),
            (b"X-Forwarded-For", b"203.0.113.9"),
            (b"X-Forwarded-Port", b"1"),
            (b"Forwarded", b"for=203.0.113.9;host=evil.invalid;proto=https"),
            (b"X-Original-URL", b"/files/../etc/passwd"),
            (b"X-Real-IP", b"203.0.113.9"),
        ]
        return rng.sample(options, rng.randint(1, 4))

    def framing(self, req: Req, data: bytes) -> None:
        """Give ``req`` a body: well framed mostly, broken on purpose otherwise.

        A broken body ends with FIN: a server rightly waits for the rest of a message
        that may still come (a silent client is the read timeout's business), but once
        the client has closed its side it must answer or close promptly."""
        rng = self.rng
        mode = rng.choice(
            [
                "none",
                "exact",
                "exact",
                "exact",
                "exact",
                "short",
                "longer",
                "chunked",
                "chunked",
                "chunked-broken",
                "bad-length",
                "cl-te",
                "te-other",
            ]
        )
        if mode == "none":
            return
        if mode == "exact":
            req.headers.append((b"Content-Length", str(len(data)).encode()))
            req.body = req.data = data
        elif mode == "short":
            announced = len(data) + rng.choice([1, 10, 100_000])
            cut = data[: rng.randint(0, len(data))]
            req.headers.append((b"Content-Length", str(announced).encode()))
            req.body = req.data = cut
            req.half_close, req.reuse, req.well_formed = True, False, False
            req.what += f" short {len(cut)}/{announced}"
        elif mode == "longer":
            extra = rng.choice([b"x", b"GET / HTTP/1.1\r\n\r\n", rng.randbytes(100)])
            req.headers.append((b"Content-Length", str(len(data)).encode()))
            req.body, req.data = data + extra, data
            req.half_close, req.reuse, req.well_formed = True, False, False
            req.what += " longer than Content-Length"
        elif mode == "chunked":
            pieces = _split(rng, data)
            req.headers.append((b"Transfer-Encoding", b"chunked"))
            ext = rng.choice([b"", b";a=b", b';q="x"'])
            trailer = rng.choice([b"", b"X-Trailer: 1\r\n"])
            req.body = b"".join(b"%x%s\r\n%s\r\n" % (len(p), ext, p) for p in pieces if p)
            req.body += b"0\r\n" + trailer + b"\r\n"
            req.data = data
            req.what += " chunked"
        elif mode == "chunked-broken":
            pieces = [p for p in _split(rng, data) if p] or [b"x"]
            kind = rng.choice(["size", "crlf", "truncated", "huge", "ext", "lf", "trailer"])
            req.headers.append((b"Transfer-Encoding", b"chunked"))
            good = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces[:-1])
            last = pieces[-1]
            req.data = b"".join(pieces)
            if kind == "size":
                req.body = good + b"zz\r\n" + last + b"\r\n0\r\n\r\n"
            elif kind == "crlf":
                req.body = good + b"%x\r\n%sXX0\r\n\r\n" % (len(last), last)
            elif kind == "truncated":
                req.body = good + b"%x\r\n%s" % (len(last) + 50, last)
                req.half_close = True
            elif kind == "huge":
                req.body = good + b"ffffffffffffffffff\r\n" + last
                req.half_close = True
            elif kind == "ext":
                req.body = good + b"%x;\x01bad\r\n%s\r\n0\r\n\r\n" % (len(last), last)
            elif kind == "lf":
                req.body = good + b"%x\n%s\n0\n\n" % (len(last), last)
            else:
                req.body = good + b"%x\r\n%s\r\n0\r\nContent-Length: 5\r\n\r\n" % (len(last), last)
            req.half_close, req.reuse, req.well_formed = True, False, False
            req.what += f" chunked broken ({kind})"
        elif mode == "bad-length":
            value = rng.choice(
                [b"-1", b"abc", b"1, 2", b"", b"0x10", "\u0661".encode(), b"+5", b" 5 "]
            )
            req.headers.append((b"Content-Length", value))
            # " 5 " is a valid length: HTTP strips the whitespace around a field value
            # (RFC 9110 section 5.5), so these bytes may be taken as the body.
            req.body = req.data = data[:5]
            req.half_close, req.reuse, req.well_formed = True, False, False
            req.what += f" Content-Length {value!r}"
        elif mode == "cl-te":
            req.headers.append((b"Content-Length", str(len(data)).encode()))
            req.headers.append((b"Transfer-Encoding", b"chunked"))
            req.body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data) if data else b"0\r\n\r\n"
            req.half_close, req.reuse, req.well_formed = True, False, False
            req.what += " Content-Length and chunked"
        else:
            req.headers.append(
                (
                    b"Transfer-Encoding",
                    rng.choice([b"gzip", b"gzip, chunked", b"chunked, chunked", b"identity"]),
                )
            )
            req.body = data
            req.half_close, req.reuse, req.well_formed = True, False, False
            req.what += " odd Transfer-Encoding"

    def hostile(self, ups: list[Upload]) -> Req:
        rng = self.rng
        up = rng.choice(ups) if ups and rng.random() < 0.85 else None
        ids = [u.id for u in ups]
        base = rng.choice(["POST", "PATCH", "PATCH", "HEAD", "DELETE", "GET", "OPTIONS"])
        method = base.encode()
        if rng.random() < 0.15:
            method = rng.choice(METHODS)
        elif rng.random() < 0.05:
            method = rng.choice(ODD_METHODS)
        target = (
            b"/files/"
            if base in ("POST", "OPTIONS")
            else f"/files/{up.id if up else ids[0] if ids else 'x'}".encode()
        )
        well_formed = method in METHODS
        if rng.random() < 0.2:
            target, ok = self.target(up.id if up else None)
            well_formed = well_formed and ok
        headers: list[tuple[bytes, bytes]] = []

        def put(name: str, value: str | bytes | None) -> None:
            if value is not None:
                headers.append(
                    (name.encode(), value if isinstance(value, bytes) else value.encode())
                )

        put("Tus-Resumable", rng.choice(TUS_RESUMABLE))
        offset = up.offset if up else None
        if base == "POST":
            roll = rng.random()
            if roll < 0.4:
                put("Upload-Length", self.number(rng.randint(0, 64 * KiB)))
            elif roll < 0.6:
                put("Upload-Defer-Length", rng.choice(["1", "0", "2", "", "yes", "1 "]))
            elif roll < 0.75:
                put("Upload-Length", self.number(100))
                put("Upload-Defer-Length", "1")
            if rng.random() < 0.3:
                put("Upload-Concat", self.concat(ids))
        if base == "PATCH" or rng.random() < 0.1:
            put("Upload-Offset", self.number(offset))
            if up is not None and up.length is None and rng.random() < 0.3:
                put("Upload-Length", self.number(up.offset + rng.randint(0, 4 * KiB)))
        if base in ("PATCH", "POST") or rng.random() < 0.1:
            put("Content-Type", rng.choice(CONTENT_TYPES))
        if rng.random() < 0.3:
            put(
                "Upload-Metadata",
                nasty_metadata(rng) if rng.random() < 0.5 else rng.choice(BAD_METADATA),
            )
        data = rng.randbytes(rng.choice([0, 1, 7, 100, 2 * KiB, 20 * KiB]))
        if rng.random() < 0.05:
            # A body the server refuses before reading it, still coming when the answer
            # does: the answer must say the connection closes (see send()).
            data = rng.randbytes(2 * MiB)
        if rng.random() < 0.15:
            good = "sha1 " + b64(hashlib.sha1(data).digest())
            put("Upload-Checksum", rng.choice([good, good, *BAD_CHECKSUMS]))
        if rng.random() < 0.15:
            put("X-HTTP-Method-Override", rng.choice(OVERRIDES))
        if rng.random() < 0.15:
            headers.extend(self.forwarded())
        req = Req(f"{method.decode('latin-1')[:12]} {target[:60]!r}", method, target, headers)
        req.well_formed = well_formed
        if rng.random() < 0.5:
            self.framing(req, data)
        self.mutate_headers(req)
        req.what += (
            " "
            + repr([(k.decode("latin-1"), v[:40].decode("latin-1")) for k, v in req.headers])[:400]
        )
        return req

    def mutate_headers(self, req: Req) -> None:
        rng = self.rng
        if req.headers and rng.random() < 0.08:  # one header twice, maybe with another value
            name, value = rng.choice(req.headers)
            req.headers.append((name, rng.choice([value, b"", b"1", b"0", b"-1"])))
        if rng.random() < 0.03:
            req.headers.append((b"X-Big", b"v" * rng.choice([17 * KiB, 64 * KiB])))
            req.well_formed, req.reuse = False, False
        if rng.random() < 0.02:
            req.headers.extend(
                (f"X-Many-{i}".encode(), b"1") for i in range(rng.choice([101, 300]))
            )
            req.well_formed, req.reuse = False, False
        if req.headers and rng.random() < 0.05:  # raw bytes in a value
            index = rng.randrange(len(req.headers))
            name, value = req.headers[index]
            junk = rng.choice(
                [b"\x00", b"\x01", b"\x7f", b"\xff", "\u00e9".encode(), b"\r", b"\n", b"\t"]
            )
            req.headers[index] = (name, value + junk + b"x")
            req.well_formed, req.reuse = False, False
        if rng.random() < 0.03:
            roll = rng.random()
            if roll < 0.3:
                req.no_host = True
            elif roll < 0.6:
                req.host = rng.choice([b"evil.invalid", b"xn--", b"[zz]", b"a..b"])
            else:
                req.headers.append((b"Host", b"evil.invalid"))
            req.well_formed, req.reuse = False, False


def unknown_coding(req: Req) -> bool:
    codings = [v.strip().lower() for k, v in req.headers if k.lower() == b"transfer-encoding"]
    return bool(codings) and codings != [b"chunked"]


def _split(rng: random.Random, data: bytes) -> list[bytes]:
    cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, rng.randint(0, 4))))
    pieces, last = [], 0
    for cut in cuts:
        pieces.append(data[last:cut])
        last = cut
    pieces.append(data[last:])
    return pieces
