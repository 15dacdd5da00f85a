"""Stateful: through any sequence of bring-ups, teardowns, policy reloads and
tampering with the test's own table, reconcile restores live == compiled and
no container interface is ever up without its isolation elements."""

from __future__ import annotations

from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from netns import links
from netns.manager import NetnsManager
from netns.ruleset import container_elements
from tests.conftest import require_root
from tests.netns.helpers import Names, fresh_names, leftovers, make_policy, sweep

POOL = ("ant", "bee", "cat")
EGRESS = st.sampled_from(
    [
        "",
        '[[egress]]\nprincipal = "role:agent"\nto = ["0.0.0.0/0"]\nports = [80]\n',
        '[[egress]]\nprincipal = "agent:bee"\nto = ["::/0", "192.0.2.0/24"]\n'
        '\n[[egress]]\nprincipal = "role:agent"\nto = ["198.51.100.0/24"]\nprotocol = "udp"\n',
    ]
)


class NetnsMachine(RuleBasedStateMachine):
    """The manager against a table it does not fully control."""

    def __init__(self) -> None:
        super().__init__()
        require_root()
        self.names: Names = fresh_names()
        self.m = NetnsManager(
            make_policy(self.names),
            table=self.names.table,
            prefix=self.names.prefix,
            ifprefix=self.names.ifprefix,
            state_path=Path(f"/tmp/hvn-{self.names.token}.json"),
        )
        self.m.ensure_table()
        self.tampered = False

    @precondition(lambda self: len(self.m.names()) < len(POOL))
    @rule(data=st.data(), roles=st.lists(st.sampled_from(["agent", "ops"]), unique=True))
    def bring_up(self, data: st.DataObject, roles: list[str]) -> None:
        name = data.draw(st.sampled_from([n for n in POOL if n not in self.m.names()]))
        self.m.up(name, roles)
        self.tampered = False  # up() re-applies a table that drifted

    @precondition(lambda self: bool(self.m.names()))
    @rule(data=st.data())
    def tear_down(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(self.m.names()))
        ifname = self.m.entry(name).host_ifname
        self.m.down(name)
        assert not links.link_exists(ifname)
        assert not links.namespace_exists(self.names.prefix + name)

    @rule(egress=EGRESS)
    def reload_policy(self, egress: str) -> None:
        self.m.reload_policy(make_policy(self.names, egress))
        self.tampered = False

    @rule()
    def delete_table_behind_its_back(self) -> None:
        self.m.nft.delete_table()
        self.tampered = True

    @rule()
    def flush_table_behind_its_back(self) -> None:
        self.m.nft.flush_table()
        self.tampered = True

    @rule()
    def reconcile(self) -> None:
        report = self.m.reconcile()
        # Untouched: nothing to repair. Tampered: drift reported and repaired
        # (unless an intervening teardown already rebuilt the table).
        assert report.repaired == (not report.in_sync)
        if not self.tampered:
            assert report.in_sync
        assert self.m.nft.live() == self.m.compiled().normalised()
        self.tampered = False

    @invariant()
    def live_equals_compiled_unless_tampered(self) -> None:
        if not self.tampered:
            assert self.m.nft.live() == self.m.compiled().normalised()

    @invariant()
    def no_interface_up_without_its_isolation(self) -> None:
        if self.tampered:
            return  # the outside world broke it; the next reconcile must fix it
        live = self.m.nft.live()
        assert live is not None
        for entry in self.m.inventory():
            if links.link_is_up(entry.host_ifname):
                for set_name, elems in container_elements(self.m.policy, entry).items():
                    have = set(live["sets"][set_name]["elements"])
                    assert {" . ".join(e) if isinstance(e, tuple) else e for e in elems} <= have

    def teardown(self) -> None:
        try:
            self.m.destroy()
        finally:
            sweep(self.names)
            assert leftovers(self.names) == {
                "namespaces": [],
                "links": [],
                "addresses": [],
                "tables": [],
            }


NetnsMachine.TestCase.settings = settings(max_examples=5, stateful_step_count=8, deadline=None)
test_netns_state_machine = NetnsMachine.TestCase
