"""The core's SQLite store: agents, questions (with answers), approvals, messages,
status and the per-agent journal.

Durability: WAL with ``synchronous=FULL`` - every committed transaction is
fsynced to the WAL before ``commit()`` returns, and the core commits before it
replies 2xx, so an acknowledged write survives SIGKILL or power loss. Every
write is one transaction: a crash leaves it whole or absent, never half.

All methods are synchronous and fast (one connection, small indexed rows); the
core calls them on its event loop so that the commit happens-before the reply.

Retention: what an agent can make without the operator acting is bounded per
agent. Open questions and pending approvals are capped (:data:`OPEN_PER_AGENT`,
429 past it); an agent's messages and its journal lines are each kept to its
newest ``max_journal_rows`` rows and ``max_journal_bytes`` bytes of text, the
oldest pruned in the same transaction as the insert that went past (like
journald's size cap: the write is accepted, history is lost, never another
agent's). Its status is one value (``agents.status``), replaced. SQLite reuses
the pruned rows' pages, so at steady state ``hive.db`` stops growing.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from enforcer.errors import Conflict, NotFound, TooManyOpen, Unavailable

__all__ = [
    "MAX_JOURNAL_BYTES",
    "MAX_JOURNAL_ROWS",
    "OPEN_PER_AGENT",
    "AgentRecord",
    "ApprovalRecord",
    "JournalEntry",
    "MessageRecord",
    "QuestionRecord",
    "Store",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    name TEXT PRIMARY KEY,
    uid INTEGER NOT NULL,
    command TEXT NOT NULL,          -- JSON list of argv strings
    created_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT '',
    status_detail TEXT NOT NULL DEFAULT '',
    status_at REAL
);
CREATE TABLE IF NOT EXISTS questions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    agent TEXT NOT NULL,
    text TEXT NOT NULL,
    options TEXT NOT NULL,          -- JSON list of strings
    created_at REAL NOT NULL,
    answer TEXT,
    answered_at REAL
);
CREATE INDEX IF NOT EXISTS questions_agent ON questions(agent);
CREATE TABLE IF NOT EXISTS approvals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    agent TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL,
    created_at REAL NOT NULL,
    decision TEXT,                  -- NULL (pending), 'approved', 'denied'
    reason TEXT,
    decided_at REAL
);
CREATE INDEX IF NOT EXISTS approvals_agent ON approvals(agent);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    agent TEXT NOT NULL,
    text TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_agent ON messages(agent);
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    agent TEXT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,           -- JSON object
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_agent ON journal(agent, id);
"""

# SQLite primary result codes of a full or failing disk (SQLITE_IOERR, SQLITE_FULL).
_STORAGE_ERRORS = frozenset({10, 13})


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """A registered agent."""

    name: str
    uid: int
    command: tuple[str, ...]
    created_at: float
    status: str
    status_detail: str
    status_at: float | None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = asdict(self)
        out["command"] = list(self.command)
        return out


@dataclass(frozen=True, slots=True)
class QuestionRecord:
    """An agent's question and, once given, the operator's answer."""

    id: int
    agent: str
    text: str
    options: tuple[str, ...]
    created_at: float
    answer: str | None
    answered_at: float | None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = asdict(self)
        out["options"] = list(self.options)
        out["status"] = "open" if self.answer is None else "answered"
        return out


@dataclass(frozen=True, slots=True)
class ApprovalRecord:
    """An agent's approval request and, once taken, the operator's decision."""

    id: int
    agent: str
    action: str
    detail: str
    created_at: float
    decision: str | None
    reason: str | None
    decided_at: float | None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = asdict(self)
        out["status"] = self.decision or "pending"
        return out


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """A message an agent sent to the operator."""

    id: int
    agent: str
    text: str
    created_at: float

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One line of an agent's journal (activity: lifecycle, questions, status...)."""

    id: int
    agent: str
    kind: str
    detail: dict[str, Any]
    at: float

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


OPEN_PER_AGENT = 100
"""Open questions, and pending approvals, one agent may have at once.

Past it the agent gets 429 ``too_many_open`` until the operator answers or
decides: one agent cannot bury the others' requests in the operator's lists,
nor grow the database without bound.
"""


MAX_JOURNAL_ROWS = 10000
"""Default of how many messages, and how many journal lines, one agent keeps."""

MAX_JOURNAL_BYTES = 8 << 20
"""Default of how many bytes of message text, and of journal detail, one agent keeps."""

# The per-agent tables under the retention bound, and the column holding the
# bulk of each row (its UTF-8 bytes are what the byte bound counts).
_RETAINED = {"journal": "detail", "messages": "text"}


def _below_cap(db: sqlite3.Connection, table: str, open_: str, agent: str, what: str) -> None:
    # table and open_ are constants of this module, never input.
    row = db.execute(f"SELECT COUNT(*) FROM {table} WHERE agent=? AND {open_}", (agent,)).fetchone()  # noqa: S608
    if int(row[0]) >= OPEN_PER_AGENT:
        raise TooManyOpen(
            f"{agent} already has {OPEN_PER_AGENT} {what}; wait for the operator to act on them"
        )


def _question(row: sqlite3.Row) -> QuestionRecord:
    return QuestionRecord(
        row["id"],
        row["agent"],
        row["text"],
        tuple(json.loads(row["options"])),
        row["created_at"],
        row["answer"],
        row["answered_at"],
    )


def _approval(row: sqlite3.Row) -> ApprovalRecord:
    return ApprovalRecord(
        row["id"],
        row["agent"],
        row["action"],
        row["detail"],
        row["created_at"],
        row["decision"],
        row["reason"],
        row["decided_at"],
    )


def _agent(row: sqlite3.Row) -> AgentRecord:
    return AgentRecord(
        row["name"],
        row["uid"],
        tuple(json.loads(row["command"])),
        row["created_at"],
        row["status"],
        row["status_detail"],
        row["status_at"],
    )


class Store:
    """One SQLite database (WAL, synchronous=FULL); every write is one transaction."""

    def __init__(
        self,
        path: Path,
        *,
        max_journal_rows: int = MAX_JOURNAL_ROWS,
        max_journal_bytes: int = MAX_JOURNAL_BYTES,
    ) -> None:
        if max_journal_rows < 1 or max_journal_bytes < 1:
            raise ValueError("the journal bounds must be positive")
        self.path = path
        self.max_journal_rows = max_journal_rows
        self.max_journal_bytes = max_journal_bytes
        # (table, agent) -> (rows, bytes) as committed: counted once per agent
        # (an indexed scan), then kept up to date by every write, so keeping
        # within the bound costs an insert one dict lookup and, past the bound,
        # one indexed range delete of its oldest rows.
        self._usage: dict[tuple[str, str], tuple[int, int]] = {}
        # The same for the transaction in progress; applied only once it commits.
        self._pending: dict[tuple[str, str], tuple[int, int]] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        path.chmod(0o600)

    def close(self) -> None:
        """Checkpoint and close."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
                self._usage.update(self._pending)
            except BaseException:
                # A failed COMMIT (disk full) may leave the transaction open.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            finally:
                self._pending.clear()
        except sqlite3.OperationalError as e:
            # Disk full or failing: the write is refused whole (503), not a 500.
            if getattr(e, "sqlite_errorcode", 0) & 0xFF in _STORAGE_ERRORS:
                raise Unavailable(f"the database cannot be written: {e}") from e
            raise

    def _journal(self, db: sqlite3.Connection, agent: str, kind: str, **detail: Any) -> None:
        text = json.dumps(detail, sort_keys=True)
        db.execute(
            "INSERT INTO journal(agent, kind, detail, at) VALUES (?,?,?,?)",
            (agent, kind, text, time.time()),
        )
        self._retain(db, "journal", agent, len(text.encode("utf-8", "surrogatepass")))

    def _retain(self, db: sqlite3.Connection, table: str, agent: str, size: int) -> None:
        """Keep ``agent``'s rows of ``table`` within the bounds, after one was inserted.

        Deletes only that agent's oldest rows of that table, in the caller's
        transaction (the insert and its prune commit together or not at all),
        and never the row just inserted: one row over the byte bound stays.
        """
        key = (table, agent)
        usage = self._pending.get(key) or self._usage.get(key)
        column = _RETAINED[table]
        if usage is None:
            # First write for this agent since start-up: count (includes the new row).
            row = db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(length(CAST({column} AS BLOB))), 0) "  # noqa: S608
                f"FROM {table} WHERE agent=?",
                (agent,),
            ).fetchone()
            rows, total = int(row[0]), int(row[1])
        else:
            rows, total = usage[0] + 1, usage[1] + size
        if rows > self.max_journal_rows or total > self.max_journal_bytes:
            oldest = db.execute(
                f"SELECT id, length(CAST({column} AS BLOB)) FROM {table} "  # noqa: S608
                "WHERE agent=? ORDER BY id LIMIT ?",
                (agent, rows - 1),
            )
            last = None
            try:
                for row_id, row_size in oldest:
                    if rows <= self.max_journal_rows and total <= self.max_journal_bytes:
                        break
                    rows, total, last = rows - 1, total - int(row_size), int(row_id)
            finally:
                oldest.close()
            if last is not None:
                db.execute(f"DELETE FROM {table} WHERE agent=? AND id<=?", (agent, last))  # noqa: S608
        self._pending[key] = (rows, total)

    # --- agents ---------------------------------------------------------------

    def add_agent(self, name: str, uid: int, command: tuple[str, ...]) -> AgentRecord:
        """Register an agent; :class:`Conflict` if the name is taken."""
        with self._tx() as db:
            try:
                db.execute(
                    "INSERT INTO agents(name, uid, command, created_at) VALUES (?,?,?,?)",
                    (name, uid, json.dumps(list(command)), time.time()),
                )
            except sqlite3.IntegrityError as e:
                raise Conflict(f"agent {name!r} already exists") from e
            self._journal(db, name, "registered", uid=uid)
        return self.agent(name)

    def remove_agent(self, name: str) -> None:
        """Forget an agent and everything it made (questions, approvals, messages)."""
        with self._tx() as db:
            cur = db.execute("DELETE FROM agents WHERE name=?", (name,))
            if cur.rowcount == 0:
                raise NotFound(f"no agent {name!r}")
            for table in ("questions", "approvals", "messages", "journal"):
                db.execute(f"DELETE FROM {table} WHERE agent=?", (name,))  # noqa: S608
        for table in _RETAINED:
            self._usage.pop((table, name), None)

    def agent(self, name: str) -> AgentRecord:
        """One agent; :class:`NotFound` if absent."""
        row = self._db.execute("SELECT * FROM agents WHERE name=?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no agent {name!r}")
        return _agent(row)

    def agents(self) -> list[AgentRecord]:
        """Every agent, by name."""
        return [_agent(r) for r in self._db.execute("SELECT * FROM agents ORDER BY name")]

    def set_status(self, name: str, status: str, detail: str) -> AgentRecord:
        """Record an agent's self-reported status."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE agents SET status=?, status_detail=?, status_at=? WHERE name=?",
                (status, detail, time.time(), name),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no agent {name!r}")
            self._journal(db, name, "status", status=status, detail=detail)
        return self.agent(name)

    def log(self, agent: str, kind: str, **detail: Any) -> None:
        """Append a journal line (lifecycle events and the like)."""
        with self._tx() as db:
            self._journal(db, agent, kind, **detail)

    def journal(
        self, agent: str, *, limit: int = 100, before: int | None = None
    ) -> list[JournalEntry]:
        """The newest ``limit`` journal lines of ``agent`` (optionally before an id)."""
        rows = self._db.execute(
            "SELECT * FROM journal WHERE agent=? AND id < ? ORDER BY id DESC LIMIT ?",
            (agent, before if before is not None else 2**62, limit),
        )
        return [
            JournalEntry(r["id"], r["agent"], r["kind"], json.loads(r["detail"]), r["at"])
            for r in rows
        ]

    # --- questions --------------------------------------------------------------

    def ask(self, agent: str, text: str, options: tuple[str, ...]) -> QuestionRecord:
        """Record a new open question from ``agent`` (:class:`TooManyOpen` past the cap)."""
        with self._tx() as db:
            _below_cap(db, "questions", "answer IS NULL", agent, "open questions")
            cur = db.execute(
                "INSERT INTO questions(agent, text, options, created_at) VALUES (?,?,?,?)",
                (agent, text, json.dumps(list(options)), time.time()),
            )
            qid = int(cur.lastrowid or 0)
            self._journal(db, agent, "question.asked", id=qid)
        return self.question(qid)

    def question(self, qid: int, *, agent: str | None = None) -> QuestionRecord:
        """One question; with ``agent``, only if it is that agent's (else NotFound)."""
        row = self._db.execute("SELECT * FROM questions WHERE id=?", (qid,)).fetchone()
        if row is None or (agent is not None and row["agent"] != agent):
            raise NotFound(f"no question {qid}")
        return _question(row)

    def questions(self, *, status: str = "all", agent: str | None = None) -> list[QuestionRecord]:
        """Questions, newest first, filtered by status ('open', 'answered', 'all')."""
        sql = "SELECT * FROM questions WHERE 1=1"
        args: list[Any] = []
        if status == "open":
            sql += " AND answer IS NULL"
        elif status == "answered":
            sql += " AND answer IS NOT NULL"
        if agent is not None:
            sql += " AND agent=?"
            args.append(agent)
        # Open questions are bounded per agent (OPEN_PER_AGENT): all of them are
        # listed, so no agent's flood can push another agent's out of a window.
        limit = "" if status == "open" else " LIMIT 500"
        return [_question(r) for r in self._db.execute(sql + " ORDER BY id DESC" + limit, args)]

    def answer(self, qid: int, answer: str) -> QuestionRecord:
        """Answer an open question; :class:`Conflict` if already answered."""
        with self._tx() as db:
            row = db.execute("SELECT agent, answer FROM questions WHERE id=?", (qid,)).fetchone()
            if row is None:
                raise NotFound(f"no question {qid}")
            if row["answer"] is not None:
                raise Conflict(f"question {qid} is already answered")
            db.execute(
                "UPDATE questions SET answer=?, answered_at=? WHERE id=?",
                (answer, time.time(), qid),
            )
            self._journal(db, row["agent"], "question.answered", id=qid)
        return self.question(qid)

    # --- approvals ----------------------------------------------------------------

    def request_approval(self, agent: str, action: str, detail: str) -> ApprovalRecord:
        """Record a new pending approval from ``agent`` (:class:`TooManyOpen` past the cap)."""
        with self._tx() as db:
            _below_cap(db, "approvals", "decision IS NULL", agent, "pending approvals")
            cur = db.execute(
                "INSERT INTO approvals(agent, action, detail, created_at) VALUES (?,?,?,?)",
                (agent, action, detail, time.time()),
            )
            aid = int(cur.lastrowid or 0)
            self._journal(db, agent, "approval.requested", id=aid, action=action)
        return self.approval(aid)

    def approval(self, aid: int, *, agent: str | None = None) -> ApprovalRecord:
        """One approval request; with ``agent``, only if it is that agent's."""
        row = self._db.execute("SELECT * FROM approvals WHERE id=?", (aid,)).fetchone()
        if row is None or (agent is not None and row["agent"] != agent):
            raise NotFound(f"no approval {aid}")
        return _approval(row)

    def approvals(self, *, status: str = "all", agent: str | None = None) -> list[ApprovalRecord]:
        """Approval requests, newest first ('pending', 'approved', 'denied', 'all')."""
        sql = "SELECT * FROM approvals WHERE 1=1"
        args: list[Any] = []
        if status == "pending":
            sql += " AND decision IS NULL"
        elif status in {"approved", "denied"}:
            sql += " AND decision=?"
            args.append(status)
        if agent is not None:
            sql += " AND agent=?"
            args.append(agent)
        # Pending requests are bounded per agent (OPEN_PER_AGENT): all are listed.
        limit = "" if status == "pending" else " LIMIT 500"
        return [_approval(r) for r in self._db.execute(sql + " ORDER BY id DESC" + limit, args)]

    def open_totals(self) -> tuple[int, int]:
        """(open questions, pending approvals) over every agent."""
        q = self._db.execute("SELECT COUNT(*) FROM questions WHERE answer IS NULL").fetchone()
        a = self._db.execute("SELECT COUNT(*) FROM approvals WHERE decision IS NULL").fetchone()
        return int(q[0]), int(a[0])

    def decide(self, aid: int, decision: str, reason: str | None) -> ApprovalRecord:
        """Approve or deny a pending request; :class:`Conflict` if already decided."""
        assert decision in {"approved", "denied"}
        with self._tx() as db:
            row = db.execute("SELECT agent, decision FROM approvals WHERE id=?", (aid,)).fetchone()
            if row is None:
                raise NotFound(f"no approval {aid}")
            if row["decision"] is not None:
                raise Conflict(f"approval {aid} is already {row['decision']}")
            db.execute(
                "UPDATE approvals SET decision=?, reason=?, decided_at=? WHERE id=?",
                (decision, reason, time.time(), aid),
            )
            self._journal(db, row["agent"], f"approval.{decision}", id=aid)
        return self.approval(aid)

    # --- messages -------------------------------------------------------------------

    def add_message(self, agent: str, text: str) -> MessageRecord:
        """Record a message from ``agent`` (its oldest pruned past the retention bound)."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO messages(agent, text, created_at) VALUES (?,?,?)",
                (agent, text, time.time()),
            )
            mid = int(cur.lastrowid or 0)
            self._retain(db, "messages", agent, len(text.encode("utf-8", "surrogatepass")))
            self._journal(db, agent, "message", id=mid)
        row = self._db.execute("SELECT * FROM messages WHERE id=?", (mid,)).fetchone()
        return MessageRecord(row["id"], row["agent"], row["text"], row["created_at"])

    def messages(self, agent: str, *, limit: int = 100) -> list[MessageRecord]:
        """The newest messages of ``agent``."""
        rows = self._db.execute(
            "SELECT * FROM messages WHERE agent=? ORDER BY id DESC LIMIT ?", (agent, limit)
        )
        return [MessageRecord(r["id"], r["agent"], r["text"], r["created_at"]) for r in rows]

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table (tests compare snapshots: "nothing changed")."""
        out: dict[str, list[tuple[Any, ...]]] = {}
        for table in ("agents", "questions", "approvals", "messages", "journal"):
            rows = self._db.execute(f"SELECT * FROM {table} ORDER BY 1")  # noqa: S608
            out[table] = [tuple(r) for r in rows]
        return out
