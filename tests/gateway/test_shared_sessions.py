"""Sessions shared by every gateway worker: one key file, one revocation file.

Each worker process has its own memory; what makes them agree is
``STATE/gateway/session-key`` and ``STATE/gateway/revoked``. These tests use
several :class:`SessionStore` objects on one directory (each as alone as a
worker: nothing shared but the files), real processes racing to create the
key, and two real ``hive-boundary gateway`` processes on one state directory:
a cookie logged out through one is refused by the other on the very next
request; tampered and expired cookies are refused by both.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import resource
import shutil
import signal
import socket
import stat
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from enforcer.sessions import (
    KEY_FILE,
    REVOKED_FILE,
    Revocations,
    SessionKeyError,
    SessionStore,
    load_or_create_key,
    load_or_create_token,
)
from tests.conftest import fill, tmpfs

REPO = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def gateway_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="hbs-", dir="/tmp"))
    try:
        yield base / "gateway"
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- the key file ------------------------------------------------------------------


def test_the_key_is_made_once_0600_in_a_0700_directory(gateway_dir: Path) -> None:
    first = SessionStore.shared(gateway_dir, 60)
    key_file = gateway_dir / KEY_FILE
    assert stat.S_IMODE(os.stat(gateway_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(gateway_dir / REVOKED_FILE).st_mode) == 0o600
    key = load_or_create_key(key_file)
    assert len(key) == 32
    assert load_or_create_key(key_file) == key  # a second worker reads the same key
    cookie, session = first.create()
    assert SessionStore.shared(gateway_dir, 60).get(cookie) == session
    assert key.hex() not in cookie
    assert key.hex() not in session.csrf_token
    assert [p.name for p in gateway_dir.iterdir() if p.name.startswith(".")] == []


def _race(path: str, start: float) -> str:
    import time

    time.sleep(max(0.0, start - time.time()))
    return load_or_create_key(Path(path)).hex()


def test_workers_starting_together_agree_on_one_key(gateway_dir: Path) -> None:
    gateway_dir.mkdir(mode=0o700)
    import time

    start = time.time() + 0.5
    with multiprocessing.get_context("fork").Pool(6) as pool:
        keys = pool.starmap(_race, [(str(gateway_dir / KEY_FILE), start)] * 12)
    assert len(set(keys)) == 1
    assert sorted(p.name for p in gateway_dir.iterdir()) == [KEY_FILE]


def _race_token(path: str, start: float) -> str:
    import time

    time.sleep(max(0.0, start - time.time()))
    return load_or_create_token(Path(path))


def test_gateways_starting_together_agree_on_one_operator_token(gateway_dir: Path) -> None:
    # Two gateways once read a token file its creator had not written yet
    # ("the operator token is empty or too short"): it is now published whole.
    gateway_dir.mkdir(mode=0o700)
    import time

    start = time.time() + 0.5
    with multiprocessing.get_context("fork").Pool(6) as pool:
        tokens = pool.starmap(_race_token, [(str(gateway_dir / "operator-token"), start)] * 12)
    assert len(set(tokens)) == 1
    assert sorted(p.name for p in gateway_dir.iterdir()) == ["operator-token"]
    assert stat.S_IMODE((gateway_dir / "operator-token").stat().st_mode) == 0o600


def test_a_key_others_can_read_or_a_symlink_or_garbage_is_refused(gateway_dir: Path) -> None:
    gateway_dir.mkdir(mode=0o700)
    key_file = gateway_dir / KEY_FILE
    load_or_create_key(key_file)
    os.chmod(key_file, 0o640)
    with pytest.raises(SessionKeyError, match="readable by others"):
        load_or_create_key(key_file)
    key_file.unlink()
    target = gateway_dir / "elsewhere"
    target.write_text("00" * 32)
    os.chmod(target, 0o600)
    key_file.symlink_to(target)
    with pytest.raises(SessionKeyError):
        load_or_create_key(key_file)
    key_file.unlink()
    key_file.write_text("not hex at all\n")
    os.chmod(key_file, 0o600)
    with pytest.raises(SessionKeyError, match="not hex"):
        load_or_create_key(key_file)


def test_a_state_directory_open_to_others_is_refused(gateway_dir: Path) -> None:
    gateway_dir.mkdir(mode=0o755)
    os.chmod(gateway_dir, 0o755)
    with pytest.raises(SessionKeyError, match="open to others"):
        SessionStore.shared(gateway_dir, 60)


# --- every worker agrees -----------------------------------------------------------------


def _workers(directory: Path, n: int, clock: FakeClock) -> list[SessionStore]:
    return [SessionStore.shared(directory, 3600, clock=clock) for _ in range(n)]


def test_a_session_made_by_one_worker_is_known_to_every_worker(gateway_dir: Path) -> None:
    clock = FakeClock()
    a, b, c = _workers(gateway_dir, 3, clock)
    cookie, session = a.create()
    for worker in (a, b, c):
        known = worker.get(cookie)
        assert known == session  # same CSRF token and view id everywhere
        assert known is not None
        assert known.csrf_ok(session.csrf_token)
    cap = b.view_capability(session, "alpha")
    assert a.view_capability(session, "alpha") == cap
    assert c.view_session(cap, "alpha") is not None


def test_logout_through_one_worker_is_refused_by_every_worker_at_once(gateway_dir: Path) -> None:
    clock = FakeClock()
    a, b, c = _workers(gateway_dir, 3, clock)
    cookie, session = a.create()
    kept, _ = b.create()
    cap = a.view_capability(session, "alpha")
    for worker in (a, b, c):
        assert worker.get(cookie) is not None  # each has read the file before
    c.revoke(cookie)
    for worker in (a, b, c):
        assert worker.get(cookie) is None
        assert worker.view_session(cap, "alpha") is None
        assert worker.get(kept) is not None
    # A worker started after the logout knows it too.
    assert _workers(gateway_dir, 1, clock)[0].get(cookie) is None


def test_tampered_and_expired_cookies_are_refused_by_every_worker(gateway_dir: Path) -> None:
    clock = FakeClock()
    workers = _workers(gateway_dir, 2, clock)
    cookie, _ = workers[0].create()
    session_id, expires, mac = cookie.split(".")
    later = str(int(expires) + 3600)
    bent = [
        f"{session_id}.{later}.{mac}",  # a longer life
        f"{session_id[:-1]}{'A' if session_id[-1] != 'A' else 'B'}.{expires}.{mac}",
        f"{session_id}.{expires}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}",
        f"{session_id}.{expires}",
        f"{session_id}.{expires}.{mac}.x",
        f"{session_id}.0{expires}.{mac}",
        cookie + " ",
    ]
    for worker in workers:
        for value in bent:
            assert worker.get(value) is None, value
        worker.revoke(bent[0])  # a forged cookie cannot be "logged out" into the file
    assert os.stat(gateway_dir / REVOKED_FILE).st_size == 0
    clock.now = float(expires)
    for worker in workers:
        assert worker.get(cookie) is None


def test_the_revocation_file_drops_records_of_expired_sessions(gateway_dir: Path) -> None:
    gateway_dir.mkdir(mode=0o700)
    clock = FakeClock()
    revoked = Revocations(gateway_dir / REVOKED_FILE, clock=clock)
    for i in range(4200):  # past the compaction size
        revoked.add(i.to_bytes(12, "big"), int(clock.now) + (10 if i < 4100 else 10_000))
        if i == 4099:
            clock.now += 20  # the first 4100 have expired
    size = os.stat(gateway_dir / REVOKED_FILE).st_size
    assert size < 200 * 16
    other = Revocations(gateway_dir / REVOKED_FILE, clock=clock)
    assert (4150).to_bytes(12, "big") in other


def _revoke_in_another_process(path: str, handle: bytes, expires: int) -> None:
    Revocations(Path(path)).add(handle, expires)


def test_a_logout_in_another_process_is_seen_by_the_very_next_lookup(gateway_dir: Path) -> None:
    gateway_dir.mkdir(mode=0o700)
    path = gateway_dir / REVOKED_FILE
    reader = Revocations(path)
    handles = [bytes([i]) * 12 for i in range(1, 6)]
    expires = int(time.time()) + 3600
    context = multiprocessing.get_context("spawn")  # nothing shared but the files
    for handle in handles:
        assert handle not in reader
        args = (str(path), handle, expires)
        child = context.Process(target=_revoke_in_another_process, args=args)
        child.start()
        child.join(30)
        assert child.exitcode == 0
        assert handle in reader  # no polling: the lookup right after the logout answered
    assert os.stat(path.with_name(REVOKED_FILE + ".lock")).st_size == 8  # the generation


def test_a_revocation_lock_left_empty_by_an_older_gateway_is_taken_on(gateway_dir: Path) -> None:
    gateway_dir.mkdir(mode=0o700)
    lock = gateway_dir / (REVOKED_FILE + ".lock")
    lock.touch(mode=0o600)
    a, b = Revocations(gateway_dir / REVOKED_FILE), Revocations(gateway_dir / REVOKED_FILE)
    a.add(b"h" * 12, int(time.time()) + 60)
    assert b"h" * 12 in b
    assert lock.stat().st_size == 8


@pytest.mark.parametrize("kind", ["fifo", "symlink", "directory"])
def test_a_revocation_lock_that_is_not_a_regular_file_is_refused(
    gateway_dir: Path, kind: str
) -> None:
    gateway_dir.mkdir(mode=0o700)
    lock = gateway_dir / (REVOKED_FILE + ".lock")
    if kind == "fifo":
        os.mkfifo(lock, 0o600)
    elif kind == "symlink":
        target = gateway_dir / "elsewhere"
        target.write_bytes(b"\0" * 8)
        lock.symlink_to(target)
    else:
        lock.mkdir()
    with pytest.raises(SessionKeyError, match="revocation lock"):
        Revocations(gateway_dir / REVOKED_FILE)


@pytest.fixture
def full_disk() -> Iterator[Path]:
    """A 512 KiB tmpfs of its own (root)."""
    with tmpfs("512k", "hbs-fs-") as mount:
        yield mount


def test_a_logout_is_seen_by_every_worker_even_when_compaction_fails(full_disk: Path) -> None:
    # Found in review: the generation was bumped only after compacting, so a
    # compaction that failed (a full disk) hid the appended record from every
    # other worker, and every later logout compacted, and failed, again.
    gateway_dir = full_disk / "gateway"
    gateway_dir.mkdir(mode=0o700)
    path = gateway_dir / REVOKED_FILE
    writer, reader = Revocations(path), Revocations(path)
    live = int(time.time()) + 3600
    for i in range(4097):  # past 64 KiB of live records: every further add compacts
        writer.add(i.to_bytes(12, "big"), live)
    fill(full_disk)
    logged_out = b"L" * 12
    writer.add(logged_out, live)  # appended (the page has room); compaction fails: not an error
    try:
        assert path.stat().st_size == 4098 * 16
        assert logged_out in reader
        assert not [p for p in gateway_dir.iterdir() if p.name.startswith(".")]  # no temp left
    finally:
        for r in (writer, reader):  # unmapped, so that the tmpfs can be unmounted
            if r._generation is not None:
                r._generation.close()
                r._generation = None


def test_workers_agree_after_the_lock_file_was_removed_by_hand(gateway_dir: Path) -> None:
    # Found in review: each process maps the lock file once; removed while the
    # gateway runs, old and new workers bumped different counters.
    gateway_dir.mkdir(mode=0o700)
    path = gateway_dir / REVOKED_FILE
    clock = FakeClock(time.time())
    old_worker = Revocations(path, clock=clock)
    (gateway_dir / (REVOKED_FILE + ".lock")).unlink()
    new_worker = Revocations(path, clock=clock)
    first, second = b"1" * 12, b"2" * 12
    old_worker.add(first, int(clock.now) + 3600)  # the writer finds the new lock file
    assert first in new_worker
    new_worker.add(second, int(clock.now) + 3600)
    assert second in old_worker  # it follows the new lock file since its logout
    third = b"3" * 12
    other_old = Revocations(path, clock=clock)
    (gateway_dir / (REVOKED_FILE + ".lock")).unlink()
    newest = Revocations(path, clock=clock)
    newest.add(third, int(clock.now) + 3600)
    clock.now += 61  # a reader that wrote nothing looks again within a minute
    assert third in other_old


def _start_then_add(path: str, fifo: bool) -> None:
    """A worker that started on a regular file, then finds a FIFO in its place at a logout."""
    revocations_path = Path(path)
    if fifo:
        with contextlib.suppress(SessionKeyError):
            Revocations(revocations_path)  # refused at start: not a regular file
        return
    revocations = Revocations(revocations_path)
    revocations_path.unlink()
    os.mkfifo(revocations_path, 0o600)
    with contextlib.suppress(SessionKeyError):
        revocations.add(b"x" * 12, int(time.time()) + 60)


@pytest.mark.parametrize("when", ["at start", "at a logout"])
def test_a_fifo_in_place_of_the_revocation_file_is_refused_not_waited_on(
    gateway_dir: Path, when: str
) -> None:
    # Found in review: open(2) of a FIFO for writing waits for a reader - at a
    # logout, with the lock held, so every worker's next logout waited too.
    gateway_dir.mkdir(mode=0o700)
    path = gateway_dir / REVOKED_FILE
    if when == "at start":
        os.mkfifo(path, 0o600)
    child = multiprocessing.get_context("spawn").Process(
        target=_start_then_add, args=(str(path), when == "at start")
    )
    child.start()
    child.join(20)
    hung = child.exitcode is None
    if hung:
        child.kill()
        child.join()
    assert not hung
    assert child.exitcode == 0


def _add_past_the_file_size_limit(path: str) -> None:
    revocations = Revocations(Path(path))
    limit = os.stat(path).st_size + 8  # half of the next record fits
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    with contextlib.suppress(SessionKeyError):
        revocations.add(b"S" * 12, int(time.time()) + 3600)


def test_a_record_cut_short_does_not_hide_the_logouts_after_it(gateway_dir: Path) -> None:
    # Found in review: a short write went unnoticed and left half a record,
    # so every later record was read misaligned, by every worker, for good.
    gateway_dir.mkdir(mode=0o700)
    path = gateway_dir / REVOKED_FILE
    writer = Revocations(path)
    writer.add(b"A" * 12, int(time.time()) + 3600)
    child = multiprocessing.get_context("spawn").Process(
        target=_add_past_the_file_size_limit, args=(str(path),)
    )
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert path.stat().st_size % 16 == 0  # the cut record taken back
    with path.open("ab") as f:
        f.write(b"half a re")  # and one a crash left behind
    later = b"L" * 12
    writer.add(later, int(time.time()) + 3600)
    other = Revocations(path)
    assert later in other
    assert b"A" * 12 in other


@pytest.mark.parametrize("kind", ["symlink", "directory"])
def test_a_lock_file_broken_while_running_is_a_session_key_error(
    gateway_dir: Path, kind: str
) -> None:
    # Found in review: an OSError escaped from add(), and the logout route
    # answered a 500 with a traceback in the log (tests/gateway/test_sessions.py).
    gateway_dir.mkdir(mode=0o700)
    revocations = Revocations(gateway_dir / REVOKED_FILE)
    lock = gateway_dir / (REVOKED_FILE + ".lock")
    lock.unlink()
    if kind == "symlink":
        (gateway_dir / "elsewhere").write_bytes(b"\0" * 8)
        lock.symlink_to(gateway_dir / "elsewhere")
    else:
        lock.mkdir()
    with pytest.raises(SessionKeyError, match="could not be recorded"):
        revocations.add(b"z" * 12, int(time.time()) + 60)
    assert b"z" * 12 in revocations  # this worker refuses the session all the same


def test_after_the_lock_file_was_replaced_every_later_logout_reaches_an_old_reader(
    gateway_dir: Path,
) -> None:
    # Found in review: the writer bumped the old counter only once, so an old
    # reader saw the first logout at once and the later ones a minute late.
    gateway_dir.mkdir(mode=0o700)
    path = gateway_dir / REVOKED_FILE
    clock = FakeClock(time.time())
    reader = Revocations(path, clock=clock)
    writer = Revocations(path, clock=clock)
    (gateway_dir / (REVOKED_FILE + ".lock")).unlink()
    for handle in (b"1" * 12, b"2" * 12, b"3" * 12):
        writer.add(handle, int(clock.now) + 3600)
        assert handle in reader


# --- two real gateway processes on one state directory --------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class TwoGateways:
    """Two ``hive-boundary gateway`` processes (one worker each), one state directory."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="hb2-", dir="/tmp"))
        (self.base / "run").mkdir()
        (self.base / "state").mkdir()
        self.ports = [_free_port(), _free_port()]
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self) -> None:
        env = {
            **os.environ,
            "HIVE_RUN_DIR": str(self.base / "run"),
            "HIVE_STATE_DIR": str(self.base / "state"),
            "HIVE_CONFIG": os.devnull,
        }
        for port in self.ports:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "enforcer.cli", "gateway",
                "--listen", f"127.0.0.1:{port}", "--workers", "1",
                cwd=REPO, env=env, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            self.procs.append(proc)
        for port in self.ports:
            for _ in range(200):
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"gateway on {port} did not start")

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        shutil.rmtree(self.base, ignore_errors=True)

    @property
    def token(self) -> str:
        return (self.base / "state" / "gateway" / "operator-token").read_text().strip()

    def origin(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"


@pytest.fixture
async def two() -> AsyncIterator[TwoGateways]:
    gateways = TwoGateways()
    try:
        await gateways.start()
        yield gateways
    finally:
        await gateways.stop()


async def _status(http: aiohttp.ClientSession, url: str, cookie: str) -> int:
    # /api/... with a valid session goes to the core (down here: 503); without, 401.
    async with http.get(url, headers={"Cookie": f"hive_session={cookie}"}) as resp:
        return resp.status


async def test_a_cookie_logged_out_through_one_process_is_refused_by_the_other(
    two: TwoGateways,
) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.post(
            two.origin(0) + "/login",
            data={"token": two.token, "next": "/"},
            headers={"Origin": two.origin(0)},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 303
            cookie = resp.cookies["hive_session"].value
            csrf = resp.cookies["hive_csrf"].value
        for i in (0, 1):
            assert await _status(http, two.origin(i) + "/api/agents", cookie) == 503
        bent = cookie[:-1] + ("A" if cookie[-1] != "A" else "B")
        for i in (0, 1):
            assert await _status(http, two.origin(i) + "/api/agents", bent) == 401
        # Log out through the second process ...
        async with http.post(
            two.origin(1) + "/logout",
            headers={
                "Cookie": f"hive_session={cookie}",
                "X-CSRF-Token": csrf,
                "Origin": two.origin(1),
            },
            allow_redirects=False,
        ) as resp:
            assert resp.status == 303
        # ... and the very next request to the first is refused.
        for i in (0, 1):
            assert await _status(http, two.origin(i) + "/api/agents", cookie) == 401
