"""The S3 store against moto's S3 server (boto3 over HTTP, nothing stubbed), then the
tus service on it through the test client, on SQLite and on PostgreSQL.

Two ``S3Store`` objects on one bucket stand for two hosts: they share only the bucket.
"""

from __future__ import annotations

import base64
import hashlib
import io
import random
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import TUS, Clock, database_settings, service
from tests.s3 import S3Server
from uploadsvc import check_reachable, close_app, create_app
from uploadsvc.config import DEFAULT_THREADS, ConfigError, Settings
from uploadsvc.errors import InsufficientStorage
from uploadsvc.storage import StoreUnavailable
from uploadsvc.storage.s3 import MAX_SEGMENTS, S3Store
from uploadsvc.storage.s3.bucket import s3_errors

MiB = 1024 * 1024
PART = 5 * MiB  # S3's smallest part: the tests cross part boundaries cheaply
UPLOAD = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"
OCTET = "application/offset+octet-stream"


def data_of(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def chunks(data: bytes, size: int = 256 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.fixture
def make_store(s3_server: S3Server, s3_bucket: str) -> Iterator[Callable[..., S3Store]]:
    made: list[S3Store] = []

    def make(prefix: str = "uploads/", part_size: int = PART) -> S3Store:
        store = S3Store(s3_bucket, prefix, endpoint_url=s3_server.endpoint, part_size=part_size)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def store(make_store: Callable[..., S3Store]) -> S3Store:
    return make_store()


def keys(store: S3Store) -> list[str]:
    listing = store.client.list_objects_v2(Bucket=store.bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def multipart_keys(store: S3Store) -> list[str]:
    listing = store.client.list_multipart_uploads(Bucket=store.bucket)
    return sorted(item["Key"] for item in listing.get("Uploads", []))


def read_all(store: S3Store, upload_id: str) -> bytes:
    with store.open(upload_id) as file:
        return file.read()


# -- the store --------------------------------------------------------------------------


def test_small_upload_in_pieces_on_two_hosts(make_store: Callable[..., S3Store]) -> None:
    a, b = make_store(), make_store()
    data = data_of(300_000, 1)
    a.create(UPLOAD)
    assert a.size(UPLOAD) == 0 and b.size(UPLOAD) == 0
    assert a.size(OTHER) is None
    assert a.append(UPLOAD, 0, chunks(data[:100_000])) == 100_000
    # The next PATCH lands on the other host: it continues from the bucket alone.
    assert b.size(UPLOAD) == 100_000
    assert b.append(UPLOAD, 100_000, chunks(data[100_000:])) == len(data)
    assert a.size(UPLOAD) == len(data)
    assert multipart_keys(a) == []  # less than a part: no multipart upload at all
    a.finish(UPLOAD)
    assert keys(a) == [f"uploads/{UPLOAD}"]
    assert read_all(b, UPLOAD) == data
    assert b.size(UPLOAD) == len(data)


@pytest.mark.parametrize(
    ("size", "piece"),
    [(12 * MiB + 123, 12 * MiB + 123), (12 * MiB + 123, 3 * MiB), (2 * PART, PART)],
    ids=["one-patch", "3MiB-patches", "exact-parts"],
)
def test_parts_and_segments_across_hosts(
    make_store: Callable[..., S3Store], size: int, piece: int
) -> None:
    hosts = [make_store(), make_store()]
    data = data_of(size, 2)
    hosts[0].create(UPLOAD)
    offset = 0
    for number, start in enumerate(range(0, size, piece)):
        host = hosts[number % 2]  # round robin, as behind the load balancer
        offset = host.append(UPLOAD, offset, chunks(data[start : start + piece]))
        assert offset == min(start + piece, size)
        assert hosts[(number + 1) % 2].size(UPLOAD) == offset
    hosts[1].finish(UPLOAD)
    assert keys(hosts[0]) == [f"uploads/{UPLOAD}"]
    assert multipart_keys(hosts[0]) == []
    assert read_all(hosts[0], UPLOAD) == data


def test_a_body_that_breaks_off_keeps_every_byte(store: S3Store) -> None:
    data = data_of(7 * MiB, 3)

    def broken() -> Iterator[bytes]:
        yield data[: 6 * MiB + 5]  # past the first part
        raise ConnectionResetError("client went away")

    store.create(UPLOAD)
    with pytest.raises(ConnectionResetError):
        store.append(UPLOAD, 0, broken())
    assert store.size(UPLOAD) == 6 * MiB + 5
    store.append(UPLOAD, 6 * MiB + 5, [data[6 * MiB + 5 :]])
    store.finish(UPLOAD)
    assert read_all(store, UPLOAD) == data


@pytest.mark.parametrize("start", [100, PART, PART + 100], ids=["mid-part", "boundary", "later"])
def test_truncate_discards_a_patch_even_past_uploaded_parts(store: S3Store, start: int) -> None:
    """What a checksum mismatch does: the PATCH's bytes go, whatever parts it wrote."""
    data = data_of(14 * MiB, 4)
    store.create(UPLOAD)
    store.append(UPLOAD, 0, [data[:start]])
    garbage = data_of(11 * MiB, 5)
    assert store.append(UPLOAD, start, chunks(garbage)) == start + len(garbage)
    store.truncate(UPLOAD, start)
    assert store.size(UPLOAD) == start
    assert store.append(UPLOAD, start, chunks(data[start:])) == len(data)
    store.finish(UPLOAD)
    assert read_all(store, UPLOAD) == data


def test_append_drops_unrecorded_bytes_past_the_offset(store: S3Store) -> None:
    """A crash after the store took bytes but before the registry recorded them."""
    data = data_of(6 * MiB, 6)
    store.create(UPLOAD)
    store.append(UPLOAD, 0, [data[:1000]])
    store.append(UPLOAD, 1000, [b"x" * 5000])  # never recorded
    assert store.append(UPLOAD, 1000, chunks(data[1000:])) == len(data)
    store.finish(UPLOAD)
    assert read_all(store, UPLOAD) == data


def test_many_tiny_patches_are_merged(store: S3Store) -> None:
    data = data_of((MAX_SEGMENTS + 1) * 3 + 10, 7)
    store.create(UPLOAD)
    offset = 0
    for byte in range(0, len(data) - 10, 3):
        offset = store.append(UPLOAD, offset, [data[byte : byte + 3]])
    assert len(keys(store)) > MAX_SEGMENTS
    offset = store.append(UPLOAD, offset, [data[offset:]])
    assert offset == len(data)
    assert len(keys(store)) <= 2
    store.finish(UPLOAD)
    assert read_all(store, UPLOAD) == data


def test_a_new_part_size_does_not_confuse_uploads_in_flight(
    make_store: Callable[..., S3Store],
) -> None:
    old, new = make_store(part_size=PART), make_store(part_size=6 * MiB)
    data = data_of(13 * MiB, 8)
    old.create(UPLOAD)
    old.append(UPLOAD, 0, chunks(data[: 7 * MiB]))
    new.append(UPLOAD, 7 * MiB, chunks(data[7 * MiB :]))
    new.finish(UPLOAD)
    assert read_all(old, UPLOAD) == data


def test_memory_per_patch_is_about_one_part(store: S3Store) -> None:
    store.create(UPLOAD)
    size = 8 * PART
    tracemalloc.start()
    try:
        store.append(UPLOAD, 0, (b"\x5a" * (256 * 1024) for _ in range(size // (256 * 1024))))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"peak Python allocations during a {size // MiB} MiB PATCH: {peak / MiB:.1f} MiB")
    assert peak < 2 * PART + 2 * MiB
    assert store.size(UPLOAD) == size


def test_a_patch_continuing_a_part_holds_about_one_part(store: S3Store) -> None:
    """A PATCH that begins mid-part (a resumed upload) puts the part's earlier bytes in
    front of its own in one buffer: no second part-sized copy (it held two)."""
    store.create(UPLOAD)
    front = 2 * MiB
    store.append(UPLOAD, 0, iter([b"\x5a" * front]))
    size = 3 * PART
    tracemalloc.start()
    try:
        store.append(UPLOAD, front, (b"\x5a" * (64 * 1024) for _ in range(size // (64 * 1024))))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"peak Python allocations continuing a part: {peak / MiB:.1f} MiB (part {PART // MiB})")
    assert peak < 1.5 * PART
    assert store.size(UPLOAD) == front + size


def test_the_connection_pool_covers_the_threads(store: S3Store) -> None:
    # gunicorn's default UPLOADSVC_THREADS: each thread may hold a connection at once.
    config = store.client.meta.config
    # botocore sets a Config's options as attributes its stubs don't declare.
    assert config.max_pool_connections >= DEFAULT_THREADS  # type: ignore[attr-defined]


def test_empty_upload(store: S3Store) -> None:
    store.create(UPLOAD)
    store.finish(UPLOAD)
    store.finish(UPLOAD)  # idempotent
    assert store.size(UPLOAD) == 0
    assert read_all(store, UPLOAD) == b""


def test_open_assembles_if_finish_never_ran_and_reads_ranges(store: S3Store) -> None:
    data = data_of(11 * MiB, 9)
    store.create(UPLOAD)
    store.append(UPLOAD, 0, chunks(data))
    with store.open(UPLOAD) as file:  # no finish(): a crash before it
        assert file.seekable()
        file.seek(6 * MiB + 7)
        assert file.read(100) == data[6 * MiB + 7 : 6 * MiB + 107]
        assert file.tell() == 6 * MiB + 107
        file.seek(-10, io.SEEK_END)
        assert file.read() == data[-10:]
        file.seek(0)
        assert hashlib.sha256(file.read()).digest() == hashlib.sha256(data).digest()
    assert keys(store) == [f"uploads/{UPLOAD}"]


def test_delete_removes_objects_segments_and_parts(store: S3Store) -> None:
    store.create(UPLOAD)
    store.append(UPLOAD, 0, chunks(data_of(6 * MiB, 11)))
    assert multipart_keys(store) == [f"uploads/{UPLOAD}"]
    store.create(OTHER)
    store.finish(OTHER)
    store.delete(UPLOAD)
    store.delete(UPLOAD)  # idempotent
    store.delete(OTHER)
    assert keys(store) == []
    assert multipart_keys(store) == []
    assert store.size(UPLOAD) is None


def test_scan_finds_objects_segments_and_orphaned_multipart_uploads(store: S3Store) -> None:
    store.create(UPLOAD)
    store.create(OTHER)
    store.finish(OTHER)
    orphan = "a1" * 16
    store.client.create_multipart_upload(Bucket=store.bucket, Key=f"uploads/{orphan}")
    # Not ours to judge: other names under the prefix, and anything outside it.
    for key in ("uploads/notes.txt", "uploads/sub/x", "elsewhere/" + "b2" * 16):
        store.client.put_object(Bucket=store.bucket, Key=key, Body=b"x")
    found = dict(store.scan())
    assert set(found) == {UPLOAD, OTHER, orphan}
    now = datetime.now(UTC)
    # (moto dates every multipart upload 2010-11-10, so the orphan's time isn't checked)
    assert all(abs(now - found[ident]) < timedelta(minutes=5) for ident in (UPLOAD, OTHER))
    store.delete(orphan)
    assert multipart_keys(store) == []


def test_ids_never_become_other_names(store: S3Store) -> None:
    with pytest.raises(ValueError):
        store.create("../x")
    short, longer = "abcdefgh", "abcdefgh1"
    store.create(short)
    store.append(short, 0, [b"short"])
    store.create(longer)
    store.append(longer, 0, [b"the longer one"])
    assert store.size(short) == 5 and store.size(longer) == 14
    store.delete(short)
    assert store.size(longer) == 14


def test_check(store: S3Store, make_store: Callable[..., S3Store], s3_server: S3Server) -> None:
    store.check()
    missing = S3Store("no-such-bucket", endpoint_url=s3_server.endpoint)
    try:
        with pytest.raises(StoreUnavailable, match="no-such-bucket"):
            missing.check()
    finally:
        missing.close()
    unreachable = S3Store("x-bucket", endpoint_url="http://127.0.0.1:9")
    try:
        with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1:9"):
            unreachable.check()
    finally:
        unreachable.close()


def test_a_full_bucket_is_507() -> None:
    error = ClientError({"Error": {"Code": "XMinioStorageFull", "Message": "full"}}, "PutObject")
    with pytest.raises(InsufficientStorage), s3_errors():
        raise error


def client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "no"}}, "AnyCall")


@pytest.mark.parametrize(
    ("error", "options", "ours", "message"),
    [
        (client_error("QuotaExceeded"), {}, InsufficientStorage, "no space"),
        (client_error("NoSuchKey"), {}, ClientError, "NoSuchKey"),  # the caller's to judge
        (
            client_error("NoSuchKey"),
            {"missing": {"NoSuchKey"}, "name": "s3://b/k"},
            FileNotFoundError,
            "s3://b/k",
        ),
        (
            client_error("NoSuchBucket"),
            {"unavailable": "s3://b/p/"},
            StoreUnavailable,
            "^s3://b/p/: NoSuchBucket$",
        ),
        (
            EndpointConnectionError(endpoint_url="http://127.0.0.1:9"),
            {"unavailable": "s3://b/"},
            StoreUnavailable,
            r"^s3://b/: .*127\.0\.0\.1:9",
        ),
        (
            EndpointConnectionError(endpoint_url="http://127.0.0.1:9"),
            {},
            EndpointConnectionError,
            "127",
        ),
        (ValueError("a bug"), {"unavailable": "s3://b/"}, ValueError, "a bug"),
    ],
)
def test_s3_errors_maps_once(
    error: Exception, options: dict[str, Any], ours: type[Exception], message: str
) -> None:
    with pytest.raises(ours, match=message), s3_errors(**options):
        raise error


# -- settings ---------------------------------------------------------------------------


def test_store_settings(tmp_path: Path) -> None:
    settings = Settings.from_env({"UPLOADSVC_DATA_DIR": str(tmp_path)})
    assert (settings.s3_bucket, settings.s3_part_size) == (None, 8 * MiB)
    settings = Settings.from_env(
        {
            "UPLOADSVC_STORE": "s3://my-bucket/some/prefix/",
            "UPLOADSVC_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
            "UPLOADSVC_S3_PART_SIZE": str(16 * MiB),
        }
    )
    assert (settings.s3_bucket, settings.s3_prefix) == ("my-bucket", "some/prefix/")
    assert settings.s3_endpoint_url == "http://127.0.0.1:9000"
    assert settings.s3_part_size == 16 * MiB
    assert Settings.from_env({"UPLOADSVC_STORE": "s3://b-1/x"}).s3_prefix == "x/"
    assert Settings.from_env({"UPLOADSVC_STORE": "file"}).s3_bucket is None


@pytest.mark.parametrize(
    ("name", "value", "extra"),
    [
        ("STORE", "s3:/bucket", {}),
        ("STORE", "s3://Bad_Bucket/x", {}),
        ("STORE", "s3://bucket/a//b", {}),
        ("STORE", "s3://bucket/../b", {}),
        ("STORE", "ftp://x", {}),
        # No prefix: cleanup would take unrelated keys at the bucket's root for orphans.
        ("STORE", "s3://bucket", {}),
        ("STORE", "s3://bucket/", {}),
        ("STORE", "s3://bucket//", {}),
        ("S3_PART_SIZE", str(5 * MiB - 1), {}),
        ("S3_PART_SIZE", "lots", {}),
        ("S3_ENDPOINT_URL", "minio:9000", {}),
        ("MAX_SIZE", str(10_000 * PART + 1), {"STORE": "s3://bucket/p", "S3_PART_SIZE": str(PART)}),
    ],
)
def test_bad_store_settings_name_the_variable(name: str, value: str, extra: dict[str, str]) -> None:
    env = {f"UPLOADSVC_{key}": item for key, item in extra.items()}
    with pytest.raises(ConfigError, match=f"^UPLOADSVC_{name}: ") as caught:
        Settings.from_env({**env, f"UPLOADSVC_{name}": value})
    assert "\n" not in str(caught.value)


def test_an_unreachable_store_is_one_line_at_start_up() -> None:
    settings = Settings.from_env(
        {"UPLOADSVC_STORE": "s3://bucket/p", "UPLOADSVC_S3_ENDPOINT_URL": "http://127.0.0.1:9"}
    )
    with pytest.raises(ConfigError, match=r"^UPLOADSVC_STORE: s3://bucket/p/ at http") as caught:
        check_reachable(settings)
    assert "\n" not in str(caught.value)


# -- the service on S3 (SQLite and PostgreSQL registries) ------------------------------


@pytest.fixture
def s3_app(
    data_dir: Path,
    clock: Clock,
    database_url: str | None,
    s3_server: S3Server,
    s3_bucket: str,
) -> Iterator[Flask]:
    app = create_app(
        {
            "DATA_DIR": str(data_dir),
            "MAX_SIZE": str(100 * MiB),
            "LOCK_TIMEOUT": "0.2",
            "ORPHAN_GRACE": "60",
            "STORE": f"s3://{s3_bucket}/tus",
            "S3_ENDPOINT_URL": s3_server.endpoint,
            "S3_PART_SIZE": str(PART),
            **database_settings(database_url),
        },
        clock=clock,
    )
    app.testing = True
    yield app
    close_app(app)


@pytest.fixture
def s3_client(s3_app: Flask) -> Iterator[FlaskClient]:
    with s3_app.test_client() as client:
        yield client


def create(client: FlaskClient, length: int, **headers: str) -> str:
    response = client.post("/files/", headers={**TUS, "Upload-Length": str(length), **headers})
    assert response.status_code == 201, response.text
    return str(response.headers["Location"])


def patch(client: FlaskClient, url: str, offset: int, body: bytes, **headers: str) -> int:
    response = client.patch(
        url,
        data=body,
        headers={**TUS, "Content-Type": OCTET, "Upload-Offset": str(offset), **headers},
    )
    return response.status_code


def offset_of(client: FlaskClient, url: str) -> int:
    return int(client.head(url, headers=TUS).headers["Upload-Offset"])


def test_tus_on_s3_keeps_nothing_on_the_host(
    s3_client: FlaskClient, s3_app: Flask, data_dir: Path, database: str
) -> None:
    data = data_of(12 * MiB + 5, 20)
    url = create(s3_client, len(data), **{"Upload-Metadata": "filename YS5iaW4="})
    assert patch(s3_client, url, 0, data[: 6 * MiB]) == 204
    assert offset_of(s3_client, url) == 6 * MiB
    assert patch(s3_client, url, 6 * MiB, data[6 * MiB :]) == 204
    assert offset_of(s3_client, url) == len(data)

    response = s3_client.get(url)
    assert response.status_code == 200
    assert hashlib.sha256(response.data).digest() == hashlib.sha256(data).digest()
    response = s3_client.get(url, headers={"Range": "bytes=7340032-7340041"})
    assert response.status_code == 206
    assert response.data == data[7 * MiB : 7 * MiB + 10]

    store = service(s3_app).store
    assert isinstance(store, S3Store)
    upload_id = url.rsplit("/", 1)[1]
    assert keys(store) == [f"tus/{upload_id}"]  # assembled at completion
    # No data files on the host; with PostgreSQL (advisory locks) no lock files either.
    assert not any(data_dir.glob("files/*"))
    if database == "postgresql":
        assert not any(data_dir.glob("locks/*"))

    assert s3_client.delete(url, headers=TUS).status_code == 204
    assert keys(store) == [] and multipart_keys(store) == []
    assert s3_client.head(url, headers=TUS).status_code == 410


def test_checksum_mismatch_past_a_part_discards_the_patch(s3_client: FlaskClient) -> None:
    data = data_of(8 * MiB, 21)
    url = create(s3_client, len(data))
    assert patch(s3_client, url, 0, data[:1000]) == 204
    body = data[1000:]
    wrong = base64.b64encode(hashlib.sha1(b"something else").digest()).decode()
    assert patch(s3_client, url, 1000, body, **{"Upload-Checksum": f"sha1 {wrong}"}) == 460
    assert offset_of(s3_client, url) == 1000
    right = base64.b64encode(hashlib.sha1(body).digest()).decode()
    assert patch(s3_client, url, 1000, body, **{"Upload-Checksum": f"sha1 {right}"}) == 204
    assert hashlib.sha256(s3_client.get(url).data).digest() == hashlib.sha256(data).digest()


def test_concatenation_on_s3(s3_client: FlaskClient) -> None:
    parts = [data_of(6 * MiB, 22), data_of(1000, 23)]
    urls = []
    for part in parts:
        url = create(s3_client, len(part), **{"Upload-Concat": "partial"})
        assert patch(s3_client, url, 0, part) == 204
        urls.append(url)
    response = s3_client.post(
        "/files/", headers={**TUS, "Upload-Concat": "final;" + " ".join(urls)}
    )
    assert response.status_code == 201
    final = response.headers["Location"]
    assert offset_of(s3_client, final) == sum(map(len, parts))
    assert s3_client.get(final).data == b"".join(parts)


def bucket_bytes(store: S3Store) -> int:
    listing = store.client.list_objects_v2(Bucket=store.bucket)
    return sum(int(item["Size"]) for item in listing.get("Contents", []))


def test_finals_on_s3_read_through_partials_and_copy_nothing(
    s3_client: FlaskClient, s3_app: Flask, clock: Clock
) -> None:
    store = service(s3_app).store
    assert isinstance(store, S3Store)
    big, small = data_of(6 * MiB, 25), data_of(1000, 26)
    partials = []
    for part in (big, small):
        url = create(s3_client, len(part), **{"Upload-Concat": "partial"})
        assert patch(s3_client, url, 0, part) == 204
        partials.append(url)
    before = bucket_bytes(store)
    named = [partials[1], partials[0], partials[1], partials[0], partials[1]]
    finals = []
    for _ in range(3):
        response = s3_client.post(
            "/files/", headers={**TUS, "Upload-Concat": "final;" + " ".join(named)}
        )
        assert response.status_code == 201
        finals.append(response.headers["Location"])
    assert bucket_bytes(store) == before  # three finals of 12 MiB each: no new bytes
    whole = small + big + small + big + small
    assert hashlib.sha256(s3_client.get(finals[0]).data).digest() == hashlib.sha256(whole).digest()
    first, last = len(small) + len(big) - 5, len(small) * 2 + len(big) + 5  # two boundaries
    response = s3_client.get(finals[1], headers={"Range": f"bytes={first}-{last}"})
    assert (response.status_code, response.data) == (206, whole[first : last + 1])

    # The partials' URLs go; their bytes stay for the finals, until none is left.
    for url in partials:
        assert s3_client.delete(url, headers=TUS).status_code == 204
        assert s3_client.head(url, headers=TUS).status_code == 410
    assert s3_client.get(finals[2]).data == whole
    for url in finals:
        assert s3_client.delete(url, headers=TUS).status_code == 204
    clock.now = datetime.now(UTC) + timedelta(days=1)
    result = s3_app.test_cli_runner().invoke(args=["cleanup", "--json"])
    assert result.exit_code == 0, result.output
    assert keys(store) == []


def test_empty_upload_on_s3(s3_client: FlaskClient) -> None:
    url = create(s3_client, 0)
    response = s3_client.get(url)
    assert (response.status_code, response.data) == (200, b"")


def test_cleanup_on_s3(s3_client: FlaskClient, s3_app: Flask, clock: Clock) -> None:
    store = service(s3_app).store
    assert isinstance(store, S3Store)
    expiring = create(s3_client, 10 * MiB)
    assert patch(s3_client, expiring, 0, data_of(6 * MiB, 24)) == 204  # a part in S3
    done = create(s3_client, 3)
    assert patch(s3_client, done, 0, b"abc") == 204
    orphan = "c3" * 16
    store.create(orphan)
    store.client.create_multipart_upload(Bucket=store.bucket, Key=f"tus/{'d4' * 16}")

    # The clock runs a day ahead: the orphans' S3 timestamps are past the grace.
    clock.now = datetime.now(UTC) + timedelta(days=1)
    result = s3_app.test_cli_runner().invoke(args=["cleanup", "--json"])
    assert result.exit_code == 0, result.output
    assert '"expired": [\n    "' + expiring.rsplit("/", 1)[1] in result.output
    assert keys(store) == [f"tus/{done.rsplit('/', 1)[1]}"]
    assert multipart_keys(store) == []
    assert s3_client.get(done).data == b"abc"


def test_healthz_asks_the_bucket(s3_client: FlaskClient) -> None:
    assert s3_client.get("/healthz").status_code == 200


def test_cleanup_on_s3_leaves_keys_outside_its_prefix(s3_app: Flask, clock: Clock) -> None:
    """Keys that look like upload ids but aren't under the prefix (the bucket's root, a
    sibling prefix that merely starts alike) are someone else's: cleanup keeps them."""
    store = service(s3_app).store
    assert isinstance(store, S3Store)
    strangers = ["c3" * 16, "abcdefgh", "z" * 64, f"tusother/{'c3' * 16}", f"tus2{'e5' * 16}"]
    for key in strangers:
        store.client.put_object(Bucket=store.bucket, Key=key, Body=b"not ours")
    orphan = "d4" * 16
    store.create(orphan)
    clock.now = datetime.now(UTC) + timedelta(days=1)
    result = s3_app.test_cli_runner().invoke(args=["cleanup", "--json"])
    assert result.exit_code == 0, result.output
    listed = store.client.list_objects_v2(Bucket=store.bucket)
    assert sorted(item["Key"] for item in listed.get("Contents", [])) == sorted(strangers)


def test_a_store_without_prefix_refuses_to_scan(make_store: Callable[..., S3Store]) -> None:
    with pytest.raises(ValueError, match="no key prefix"):
        make_store(prefix="").scan()


def test_head_reads_the_segments_of_an_upload_still_arriving(store: S3Store) -> None:
    """The type gate's window on S3 (typegate.py): the first bytes of an upload with
    no whole part yet, across the segments several PATCHes left."""
    upload_id = "c" * 32
    store.create(upload_id)
    assert store.head(upload_id, 10) == b""
    store.append(upload_id, 0, [b"MZ"])
    store.append(upload_id, 2, [b"\x90\x00rest"])
    assert store.head(upload_id, 4) == b"MZ\x90\x00"
    assert store.head(upload_id, 100) == b"MZ\x90\x00rest"


def test_the_type_gate_on_s3_judges_across_patches(
    data_dir: Path, clock: Clock, database_url: str | None, s3_server: S3Server, s3_bucket: str
) -> None:
    from tests.test_gates import EXE, meta

    app = create_app(
        {
            "DATA_DIR": str(data_dir),
            "STORE": f"s3://{s3_bucket}/gated",
            "S3_ENDPOINT_URL": s3_server.endpoint,
            "ALLOWED_TYPES": "application/pdf",
            **database_settings(database_url),
        },
        clock=clock,
    )
    try:
        with app.test_client() as client:
            url = create(client, len(EXE), **{"Upload-Metadata": meta(filetype="application/pdf")})
            assert patch(client, url, 0, EXE[:10]) == 204
            assert patch(client, url, 10, EXE[10:]) == 415
            assert offset_of(client, url) == 10
    finally:
        close_app(app)
