"""libnftables transactions: round trip, atomicity, only our own table."""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterator

import pytest

from netns.apply import Nft, NftError
from netns.ruleset import ContainerEntry, compile_ruleset, normalise_listing, subjects_for
from tests.netns.helpers import Names, make_policy

EGRESS = '[[egress]]\nprincipal = "role:agent"\nto = ["0.0.0.0/0", "::/0"]\nports = [80]\n'


@pytest.fixture
def names(names: Names) -> Iterator[Names]:
    """The shared fixture (root, unique names, swept), plus this module's second table."""
    try:
        yield names
    finally:
        Nft(names.table + "o").delete_table()


def _entry(i: int) -> ContainerEntry:
    return ContainerEntry(
        f"c{i}",
        f"zz-c{i}",
        ipaddress.IPv4Address(f"10.9.0.{4 * i + 2}"),
        ipaddress.IPv6Address(f"fd00::{4 * i + 2:x}"),
        subjects_for(f"c{i}", ["agent"]),
    )


def test_applied_table_reads_back_equal_to_the_compiled_one(names: Names) -> None:
    rs = compile_ruleset(make_policy(names, EGRESS), [_entry(0), _entry(1)], names.table)
    nft = Nft(names.table)
    nft.replace_table(rs)
    assert nft.live() == rs.normalised()


def test_table_flags_read_back_whatever_nftables_1_0_6_prints_for_them(names: Names) -> None:
    """Its JSON prints one table flag from freed memory (another string, or no valid
    JSON at all): the flags are in every chain's entry, and they are the real ones."""
    rs = compile_ruleset(make_policy(names, EGRESS), [_entry(0)], names.table)
    nft = Nft(names.table)
    nft.replace_table(rs)
    subprocess.run(["nft", f"add table inet {names.table} {{ flags dormant; }}"], check=True)
    live = nft.live()
    assert live is not None
    assert all(c["table_flags"] == ["dormant"] for c in live["chains"].values())
    assert live != rs.normalised()
    nft.replace_table(rs)  # re-created without flags
    assert nft.live() == rs.normalised()
    # A dormant table with nothing in it: 1.0.6 prints no valid JSON for it.
    other = Nft(names.table + "o")
    subprocess.run(["nft", f"add table inet {other.table} {{ flags dormant; }}"], check=True)
    assert other.exists()
    assert other.live() == {"sets": {}, "chains": {}, "rules": {}}
    assert other.list_raw() == {
        "nftables": [{"table": {"family": "inet", "name": other.table, "flags": ["dormant"]}}]
    }


@pytest.mark.parametrize(
    ("flags", "want"),
    [(None, []), ("dormant", ["dormant"]), (["owner", "dormant"], ["dormant", "owner"])],
)
def test_normalising_puts_the_table_flags_in_every_chain(
    flags: str | list[str] | None, want: list[str]
) -> None:
    table: dict[str, object] = {"family": "inet", "name": "t", "handle": 1}
    if flags is not None:
        table["flags"] = flags
    chain = {"family": "inet", "table": "t", "name": "input", "handle": 2, "type": "filter",
             "hook": "input", "prio": 0, "policy": "accept"}  # fmt: skip
    norm = normalise_listing({"nftables": [{"table": table}, {"chain": chain}]})
    assert norm is not None
    assert norm["chains"]["input"]["table_flags"] == want


def test_a_refused_transaction_changes_nothing(names: Names) -> None:
    rs = compile_ruleset(make_policy(names, EGRESS), [_entry(0)], names.table)
    nft = Nft(names.table)
    nft.replace_table(rs)
    before = nft.live()
    sets = {s.name: s for s in rs.sets}
    # One valid element and one invalid (not an IPv4 address) in the same batch.
    with pytest.raises(NftError):
        nft.update_elements(
            sets, add={"cont_if": ["zz-new"], "cont_src4": [("zz-new", "999.1.1.1")]}
        )
    assert nft.live() == before
    # A whole-table replacement that fails half-way leaves the old table intact.
    broken = compile_ruleset(make_policy(names, EGRESS), [_entry(0), _entry(1)], names.table)
    bad_sets = tuple(
        s if s.name != "cont_src6" else type(s)(s.name, s.type, s.flags, frozenset({("x", "bad")}))
        for s in broken.sets
    )
    with pytest.raises(NftError):
        nft.replace_table(type(broken)(broken.table, bad_sets, broken.chains, broken.rules))
    assert nft.live() == before


def test_other_tables_are_never_touched(names: Names) -> None:
    other = names.table + "o"
    subprocess.run(["nft", f"add table inet {other}"], check=True)
    subprocess.run(["nft", f"add chain inet {other} c"], check=True)
    listing = subprocess.run(
        ["nft", "-j", "list", "table", "inet", other], capture_output=True, check=True, text=True
    ).stdout
    nft = Nft(names.table)
    nft.replace_table(compile_ruleset(make_policy(names, EGRESS), [_entry(0)], names.table))
    nft.flush_table()
    nft.delete_table()
    after = subprocess.run(
        ["nft", "-j", "list", "table", "inet", other], capture_output=True, check=True, text=True
    ).stdout
    assert after == listing


def test_a_command_for_another_table_is_refused_before_nftables_sees_it(names: Names) -> None:
    nft = Nft(names.table)
    rs = compile_ruleset(make_policy(names), [], names.table + "o")
    with pytest.raises(NftError):
        nft.replace_table(rs)
    assert not Nft(names.table + "o").exists()
