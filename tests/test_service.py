"""UploadService driven directly: a real SQLite registry file, the in-memory store and
locker (held to the real ones by tests/test_*_contract.py), an injected clock.

The middle layer between the protocol tables and the app tests: each test builds the
state a crash, a full disk or the clock leaves, then asks the service what a request
would, with no HTTP in between. A "restart" is a new service over the same registry,
store and locker, as a new worker after a crash.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.conftest import Clock
from uploadsvc import db
from uploadsvc.checksums import Checksum
from uploadsvc.errors import (
    BodyIncomplete,
    ChecksumMismatch,
    InsufficientStorage,
    OffsetMismatch,
    UploadGone,
    UploadLocked,
)
from uploadsvc.hooks import Hooks
from uploadsvc.locking.memory import MemoryLocker
from uploadsvc.models import Upload
from uploadsvc.records import Limits, UploadInfo
from uploadsvc.service import UploadService
from uploadsvc.storage.memory import MemoryStore

EXPIRE_AFTER = timedelta(hours=1)
LIMITS = Limits(max_size=1000, expire_after=EXPIRE_AFTER, lock_timeout=0)


class Crash(BaseException):
    """The process dies here: no ``except Exception`` and no recording runs after it."""


class CrashingStore(MemoryStore):
    """A memory store that can die once in ``truncate`` or ``finish``, armed by name."""

    crash_in: str | None = None

    def _maybe_crash(self, where: str) -> None:
        if self.crash_in == where:
            self.crash_in = None
            raise Crash(where)

    def truncate(self, upload_id: str, size: int) -> None:
        self._maybe_crash("truncate")
        super().truncate(upload_id, size)

    def finish(self, upload_id: str) -> None:
        self._maybe_crash("finish")
        super().finish(upload_id)


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry file migrated as create_app does, once: each test gets a copy."""
    directory = tmp_path_factory.mktemp("registry")
    engine = db.make_engine(f"sqlite:///{directory / 'uploadsvc.db'}")
    db.upgrade(engine, directory / "migrate.lock")
    engine.dispose()
    return directory / "uploadsvc.db"


@pytest.fixture
def registry(migrated: Path, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """A real SQLite file of the test's own."""
    path = tmp_path / "uploadsvc.db"
    shutil.copyfile(migrated, path)
    engine = db.make_engine(f"sqlite:///{path}")
    yield db.make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def store() -> CrashingStore:
    return CrashingStore()


@pytest.fixture
def locker() -> MemoryLocker:
    return MemoryLocker()


@pytest.fixture
def events() -> list[tuple[str, str]]:
    """(event, upload id) for every event the services emit, in order."""
    return []


@pytest.fixture
def start(
    registry: sessionmaker[Session],
    store: CrashingStore,
    locker: MemoryLocker,
    clock: Clock,
    events: list[tuple[str, str]],
) -> Callable[[], UploadService]:
    """Start a service (a worker) over the test's registry, store, locker and clock."""

    def new_service() -> UploadService:
        hooks = Hooks(listeners=[lambda event, info: events.append((event, info.id))])
        return UploadService(registry, store, locker, LIMITS, clock=clock, hooks=hooks)

    return new_service


@pytest.fixture
def service(start: Callable[[], UploadService]) -> UploadService:
    return start()


def row_of(registry: sessionmaker[Session], upload_id: str) -> Upload:
    with registry() as session:
        row = session.get(Upload, upload_id)
        assert row is not None
        return row


def read(service: UploadService, upload_id: str) -> bytes:
    _, file = service.download(upload_id)
    with file:
        return file.read()


def finishes(events: list[tuple[str, str]], upload_id: str) -> int:
    return events.count(("post-finish", upload_id))


def sha1(data: bytes) -> Checksum:
    return Checksum("sha1", hashlib.sha1(data).digest())


# -- append: offsets never lie ------------------------------------------------------------


def test_an_append_records_what_landed(service: UploadService, store: MemoryStore) -> None:
    upload = service.create(10, {})
    info = service.append(upload.id, 0, [b"abc", b"de"], content_length=5)
    assert info.offset == 5
    assert store.size(upload.id) == 5
    assert service.info(upload.id).offset == 5


def test_a_body_that_ends_early_keeps_every_byte_received(service: UploadService) -> None:
    upload = service.create(10, {})
    with pytest.raises(BodyIncomplete) as refused:
        service.append(upload.id, 0, [b"abcd"], content_length=8)
    assert refused.value.offset == 4
    assert service.describe(upload.id).offset == 4


def test_a_busy_upload_is_locked_and_nothing_is_written(
    service: UploadService, locker: MemoryLocker, store: MemoryStore
) -> None:
    upload = service.create(10, {})
    with locker.hold(upload.id, timeout=0), pytest.raises(UploadLocked):
        service.append(upload.id, 0, [b"abc"])
    assert store.size(upload.id) == 0
    assert service.describe(upload.id).offset == 0


# -- reconcile: bytes in the store the registry never recorded ----------------------------


def test_the_next_look_counts_bytes_a_crash_left_unrecorded(
    service: UploadService, store: MemoryStore
) -> None:
    upload = service.create(10, {})
    store.append(upload.id, 0, [b"abcd"])  # landed; the process died before recording
    assert service.describe(upload.id).offset == 0  # a read only: the row as it was
    assert service.info(upload.id).offset == 4
    assert service.describe(upload.id).offset == 4  # and now recorded


def test_unrecorded_bytes_past_the_length_are_cut_and_the_upload_finishes_once(
    service: UploadService, store: MemoryStore, events: list[tuple[str, str]]
) -> None:
    upload = service.create(5, {})
    store.append(upload.id, 0, [b"abcdefgh"])
    info = service.info(upload.id)
    assert (info.offset, info.complete, info.finished_now) == (5, True, True)
    assert store.size(upload.id) == 5
    service.info(upload.id)
    assert read(service, upload.id) == b"abcde"
    assert finishes(events, upload.id) == 1


def test_a_refused_patch_still_records_unrecorded_bytes(
    service: UploadService, store: MemoryStore
) -> None:
    """The PATCH's own transaction rolls back with its 409; the bytes are recorded all
    the same, so the client's HEAD and the next PATCH agree."""
    upload = service.create(10, {})
    store.append(upload.id, 0, [b"abcd"])
    with pytest.raises(OffsetMismatch):
        service.append(upload.id, 0, [b"xx"])
    assert service.describe(upload.id).offset == 4
    assert service.append(upload.id, 4, [b"ef"]).offset == 6


# -- verify: checksummed bodies -----------------------------------------------------------


def test_a_matching_checksum_keeps_the_body(service: UploadService) -> None:
    upload = service.create(10, {})
    assert service.append(upload.id, 0, [b"hel", b"lo"], checksum=sha1(b"hello")).offset == 5


def test_a_checksum_mismatch_drops_the_whole_body(
    service: UploadService, store: MemoryStore, registry: sessionmaker[Session]
) -> None:
    upload = service.create(10, {})
    service.append(upload.id, 0, [b"ok"])
    with pytest.raises(ChecksumMismatch) as refused:
        service.append(upload.id, 2, [b"hello"], checksum=sha1(b"other"))
    assert refused.value.offset == 2
    assert store.size(upload.id) == 2
    assert not row_of(registry, upload.id).verifying
    assert service.info(upload.id).offset == 2


def test_a_crash_mid_verify_leaves_verifying_and_the_next_look_drops_the_body(
    service: UploadService,
    start: Callable[[], UploadService],
    store: CrashingStore,
    registry: sessionmaker[Session],
) -> None:
    upload = service.create(10, {})
    service.append(upload.id, 0, [b"ok"])

    def body() -> Iterator[bytes]:
        yield b"unverified"[:6]
        # The client goes away before the checksum could be checked, and the process
        # dies while dropping the unverified bytes.
        store.crash_in = "truncate"
        raise ConnectionResetError

    with pytest.raises(Crash):
        service.append(upload.id, 2, body(), checksum=sha1(b"whatever"))
    row = row_of(registry, upload.id)
    assert (row.verifying, row.offset, store.size(upload.id)) == (True, 2, 8)

    restarted = start()
    # A read of the registry alone says what is verified; the look under the lock drops
    # the rest from the store and clears the flag.
    assert restarted.describe(upload.id).offset == 2
    assert restarted.info(upload.id).offset == 2
    assert store.size(upload.id) == 2
    assert not row_of(registry, upload.id).verifying
    assert restarted.append(upload.id, 2, [b"rest"]).offset == 6


def test_a_patch_after_a_crash_mid_verify_drops_the_body_first(
    service: UploadService, start: Callable[[], UploadService], store: CrashingStore
) -> None:
    upload = service.create(10, {})

    def body() -> Iterator[bytes]:
        yield b"unverified"
        store.crash_in = "truncate"
        raise ConnectionResetError

    with pytest.raises(Crash):
        service.append(upload.id, 0, body(), checksum=sha1(b"whatever"))
    assert store.size(upload.id) == 10
    assert start().append(upload.id, 0, [b"abc"]).offset == 3
    assert store.size(upload.id) == 3
    with store.open(upload.id) as file:
        assert file.read() == b"abc"


# -- a full disk: the offset is what landed -----------------------------------------------


def test_a_full_disk_mid_append_records_what_landed_and_resumes(
    service: UploadService, store: MemoryStore
) -> None:
    store.capacity = 6
    upload = service.create(10, {})
    with pytest.raises(InsufficientStorage) as refused:
        service.append(upload.id, 0, [b"abcd", b"efgh"], content_length=8)
    assert refused.value.offset == 6
    assert service.describe(upload.id).offset == 6
    store.capacity = None  # space freed
    info = service.append(upload.id, 6, [b"ghij"])
    assert info.complete
    assert read(service, upload.id) == b"abcdefghij"


def test_a_full_disk_mid_checksummed_append_keeps_nothing_of_it(
    service: UploadService, store: MemoryStore
) -> None:
    store.capacity = 6
    upload = service.create(10, {})
    service.append(upload.id, 0, [b"ab"])
    with pytest.raises(InsufficientStorage) as refused:
        service.append(upload.id, 2, [b"cdefgh"], checksum=sha1(b"cdefgh"))
    assert refused.value.offset == 2
    assert store.size(upload.id) == 2
    assert service.info(upload.id).offset == 2


# -- concatenation: finals are read through their partials --------------------------------


def test_a_final_reads_through_its_partials_without_a_copy(
    service: UploadService, store: MemoryStore, events: list[tuple[str, str]]
) -> None:
    first = service.create(3, {}, partial=True)
    second = service.create(4, {}, partial=True)
    service.append(first.id, 0, [b"abc"])
    service.append(second.id, 0, [b"defg"])
    final = service.create_final([first.id, second.id, first.id], {})
    assert (final.complete, final.length, final.offset) == (True, 10, 10)
    assert final.parts == (first.id, second.id, first.id)
    assert store.size(final.id) == 0  # its bytes are its partials'
    assert read(service, final.id) == b"abcdefgabc"
    _, file = service.download(final.id)
    with file:
        file.seek(5)
        assert file.read(3) == b"fga"
    assert finishes(events, final.id) == 1


def test_a_final_completes_when_its_last_partial_finishes(
    service: UploadService, events: list[tuple[str, str]]
) -> None:
    first = service.create(2, {}, partial=True)
    second = service.create(2, {}, partial=True)
    service.append(first.id, 0, [b"ab"])
    service.append(second.id, 0, [b"c"])
    final = service.create_final([first.id, second.id], {})
    assert not final.complete
    assert finishes(events, final.id) == 0
    service.append(second.id, 1, [b"d"])
    info = service.info(final.id)
    assert info.complete
    assert read(service, final.id) == b"abcd"
    assert finishes(events, final.id) == 1


def test_terminating_a_partial_a_final_reads_keeps_its_bytes(
    service: UploadService, store: MemoryStore
) -> None:
    first = service.create(2, {}, partial=True)
    service.append(first.id, 0, [b"ab"])
    final = service.create_final([first.id], {})
    service.terminate(first.id)
    with pytest.raises(UploadGone):
        service.info(first.id)
    assert store.size(first.id) == 2
    assert read(service, final.id) == b"ab"


# -- expiry, at the second ----------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "gone"), [(-1, False), (0, True), (1, True)])
def test_an_unfinished_upload_expires_at_expires_at(
    service: UploadService, clock: Clock, seconds: int, gone: bool
) -> None:
    upload = service.create(10, {})
    assert upload.expires_at == clock.now + EXPIRE_AFTER
    clock.now = upload.expires_at + timedelta(seconds=seconds)
    if gone:
        with pytest.raises(UploadGone):
            service.info(upload.id)
        with pytest.raises(UploadGone):
            service.append(upload.id, 0, [b"late"])
    else:
        assert service.info(upload.id).offset == 0
        assert service.append(upload.id, 0, [b"just"]).offset == 4


def test_an_append_pushes_expiry_back(service: UploadService, clock: Clock) -> None:
    upload = service.create(10, {})
    clock.advance(EXPIRE_AFTER.total_seconds() - 1)
    info = service.append(upload.id, 0, [b"abc"])
    assert info.expires_at == clock.now + EXPIRE_AFTER
    clock.advance(EXPIRE_AFTER.total_seconds() - 1)
    assert service.info(upload.id).offset == 3


def test_a_completed_upload_never_expires(service: UploadService, clock: Clock) -> None:
    upload = service.create(3, {})
    info = service.append(upload.id, 0, [b"abc"])
    assert info.expires_at is None
    clock.advance(10 * EXPIRE_AFTER.total_seconds())
    assert read(service, upload.id) == b"abc"


def test_a_partial_expired_at_the_second_cannot_be_concatenated(
    service: UploadService, clock: Clock
) -> None:
    partial = service.create(10, {}, partial=True)
    assert partial.expires_at is not None
    clock.now = partial.expires_at
    with pytest.raises(UploadGone):
        service.create_final([partial.id], {})


# -- finish: exactly once -----------------------------------------------------------------


def test_post_finish_is_emitted_once_by_the_request_that_completed_it(
    service: UploadService, start: Callable[[], UploadService], events: list[tuple[str, str]]
) -> None:
    upload = service.create(4, {})
    assert not service.append(upload.id, 0, [b"ab"]).finished_now
    completing = service.append(upload.id, 2, [b"cd"])
    assert (completing.complete, completing.finished_now) == (True, True)
    other_worker = start()
    looks: list[UploadInfo] = [service.info(upload.id), other_worker.info(upload.id)]
    assert not any(look.finished_now for look in looks)
    assert read(other_worker, upload.id) == b"abcd"
    assert not other_worker.resume_finish(upload.id)
    assert finishes(events, upload.id) == 1


def test_an_empty_upload_finishes_at_creation_once(
    service: UploadService, events: list[tuple[str, str]]
) -> None:
    upload = service.create(0, {})
    assert (upload.complete, upload.finished_now) == (True, True)
    service.info(upload.id)
    assert events == [("post-create", upload.id), ("post-finish", upload.id)]


def test_a_finish_a_crash_left_due_runs_once_on_the_next_look(
    service: UploadService,
    start: Callable[[], UploadService],
    store: CrashingStore,
    registry: sessionmaker[Session],
    events: list[tuple[str, str]],
) -> None:
    upload = service.create(3, {})
    store.crash_in = "finish"
    with pytest.raises(Crash):
        service.append(upload.id, 0, [b"abc"])
    row = row_of(registry, upload.id)
    assert (row.offset, row.completed_at is not None, row.finished_at) == (3, True, None)
    assert finishes(events, upload.id) == 0

    restarted = start()
    assert restarted.info(upload.id).finished_now
    assert not restarted.info(upload.id).finished_now
    assert not restarted.resume_finish(upload.id)
    assert finishes(events, upload.id) == 1


def test_cleanups_resume_finish_runs_a_due_finish_once(
    service: UploadService,
    start: Callable[[], UploadService],
    store: CrashingStore,
    events: list[tuple[str, str]],
) -> None:
    upload = service.create(3, {})
    store.crash_in = "finish"
    with pytest.raises(Crash):
        service.append(upload.id, 0, [b"abc"])
    restarted = start()
    assert restarted.resume_finish(upload.id)
    assert not restarted.resume_finish(upload.id)
    restarted.info(upload.id)
    assert finishes(events, upload.id) == 1
