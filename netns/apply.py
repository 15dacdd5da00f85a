"""libnftables JSON transactions on the project's own table, and nothing else.

The only module that talks to nftables (in-process, through Debian's
``python3-nftables`` binding: no ``nft`` subprocess per rule). Every command
names ``inet <table>`` explicitly, so no other table and no other part of the
ruleset is ever touched.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from enforcer.errors import HiveError
from netns.ruleset import (
    Element,
    Ruleset,
    SetDef,
    normalise_listing,
    render_commands,
    render_element,
)

__all__ = ["Nft", "NftError", "valid_table_name"]

_TABLE = re.compile(r"^[a-z][a-z0-9_]{0,30}$")


class NftError(HiveError):
    """nftables refused a transaction, or is missing; nothing was changed."""

    status = 503
    code = "nftables"


def valid_table_name(table: str) -> str:
    """Return ``table`` if it is a safe nft identifier, else raise."""
    if not _TABLE.match(table):
        raise NftError(f"bad table name {table!r}")
    return table


class Nft:
    """One libnftables context bound to one table ``inet <table>``."""

    def __init__(self, table: str = "hive") -> None:
        self.table = valid_table_name(table)
        try:
            import nftables
        except ImportError as e:  # pragma: no cover - depends on the host
            raise NftError(
                "python3-nftables is not installed (apt install python3-nftables)"
            ) from e
        self._nft = nftables.Nftables()
        self._nft.set_json_output(True)
        self._nft.set_handle_output(False)
        # Text output, for what the JSON output of nftables 1.0.6 gets wrong.
        self._text = nftables.Nftables()
        self._text.set_terse_output(True)
        # libnftables contexts are not thread-safe.
        self._lock = threading.Lock()

    def _run(self, commands: list[Any]) -> Any:
        for c in commands:
            _assert_ours(c, self.table)
        with self._lock:
            rc, out, err = self._nft.json_cmd({"nftables": commands})
        if rc != 0:
            raise NftError(f"nftables refused the transaction on inet {self.table}: {err.strip()}")
        return out

    def replace_table(self, rs: Ruleset) -> None:
        """Delete and recreate the whole table in one transaction (all or nothing)."""
        if rs.table != self.table:
            raise NftError(f"ruleset is for table {rs.table!r}, this context owns {self.table!r}")
        self._run(render_commands(rs))

    def update_elements(
        self,
        sets: Mapping[str, SetDef],
        add: Mapping[str, Iterable[Element]] | None = None,
        delete: Mapping[str, Iterable[Element]] | None = None,
    ) -> None:
        """Add and delete set elements, all in one transaction."""
        cmds: list[Any] = []
        for verb, changes in (("delete", delete or {}), ("add", add or {})):
            for name, elems in changes.items():
                lst = [render_element(sets[name], e) for e in sorted(elems, key=str)]
                if lst:
                    cmds.append(
                        {
                            verb: {
                                "element": {
                                    "family": "inet",
                                    "table": self.table,
                                    "name": name,
                                    "elem": lst,
                                }
                            }
                        }
                    )
        if cmds:
            self._run(cmds)

    def list_raw(self) -> Any | None:
        """The live table as libnftables JSON, or ``None`` if it does not exist.

        The table's ``flags`` (e.g. ``dormant``) are read from the text
        listing: nftables 1.0.6 (Debian 12) prints a single table flag in JSON
        from freed memory - some other string, or no valid JSON at all. A
        listing that does not parse keeps only the table and its flags, so
        it compares as drifted (every set and chain missing), never in sync.
        """
        cmd = {"nftables": [{"list": {"table": {"family": "inet", "name": self.table}}}]}
        with self._lock:
            rc, out, _err = self._nft.cmd(json.dumps(cmd))
        if rc != 0:
            return None
        try:
            listing = json.loads(out)
            table = next(i["table"] for i in listing["nftables"] if "table" in i)
            readable = True
        except (ValueError, KeyError, TypeError, StopIteration):
            table = {"family": "inet", "name": self.table}
            listing = {"nftables": [{"table": table}]}
            readable = False
        if "flags" in table or not readable:
            flags = self._table_flags()
            if flags is None:
                return None
            table["flags"] = flags
        return listing

    def _table_flags(self) -> list[str] | None:
        """The table's flags from ``nft list table`` (text), ``None`` if it is gone."""
        with self._lock:
            rc, out, _err = self._text.cmd(f"list table inet {self.table}")
        if rc != 0:
            return None
        # "table inet <t> {" then, one tab in, "flags dormant" (comma-separated)
        # before the first set or chain.
        for line in out.splitlines()[1:]:
            words = line.split()
            if not words or words[0] in {"set", "map", "chain", "}"}:
                break
            if words[0] == "flags":
                return sorted(f.strip() for f in " ".join(words[1:]).split(",") if f.strip())
        return []

    def live(self) -> dict[str, Any] | None:
        """The live table normalised for comparison with :meth:`Ruleset.normalised`."""
        raw = self.list_raw()
        return None if raw is None else normalise_listing(raw)

    def exists(self) -> bool:
        """Whether the table exists now."""
        return self.list_raw() is not None

    def delete_table(self) -> None:
        """Remove the table if present (used by tests and by a full teardown)."""
        t = {"family": "inet", "name": self.table}
        self._run([{"add": {"table": t}}, {"delete": {"table": t}}])

    def flush_table(self) -> None:
        """Remove every rule of the table but keep it and its sets (tests use it as drift)."""
        if not self.exists():
            return
        self._run([{"flush": {"table": {"family": "inet", "name": self.table}}}])


def _assert_ours(cmd: Mapping[str, Any], table: str) -> None:
    # A guard, not a parser: every object a command touches must name our table.
    for body in cmd.values():
        for kind, obj in body.items():
            name = obj.get("name") if kind == "table" else obj.get("table")
            if obj.get("family") != "inet" or name != table:
                raise NftError(f"refusing a command outside inet {table}: {cmd}")
