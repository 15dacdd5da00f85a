"""Host-side veth names: every agent gets its own, even when names are truncated + hashed.

``links.host_ifname`` is recomputed from the agent's name wherever it is
needed (the table's ``cont_if`` set, the links, their repair), so two agents
sharing one would share one interface and one isolation entry.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from pyroute2 import IPRoute

from enforcer.names import AGENT_NAME, AGENT_NAME_RE
from netns import links
from tests.conftest import require_root
from tests.netns.helpers import HTTP_EGRESS, fresh_names, make_policy, managed

agent_names = st.from_regex(rf"\A{AGENT_NAME}\Z")
# Prefixes as deployments and tests use them ("hv-", "t<hex>", "p<hex>"): at
# most 8 bytes, so a hashed name keeps the whole prefix.
prefixes = st.from_regex(r"\A[a-z][a-z0-9-]{0,7}\Z")


@st.composite
def lookalike(draw: st.DrawFn, hashed: str, prefix: str) -> str:
    """The valid agent name whose plain host name is closest to ``hashed``: its
    separator replaced by a character agent names may contain."""
    sep = draw(st.sampled_from("-0a"))
    return hashed[len(prefix) :].replace("_", sep)


def _valid_ifname(name: str) -> bool:
    # The kernel's dev_valid_name(): 1..15 bytes, not "." or "..", no "/", ":" or space.
    raw = name.encode()
    return (
        0 < len(raw) <= links.IFNAMSIZ
        and name not in {".", ".."}
        and not any(c in name for c in "/: \t\n")
    )


@given(name=agent_names, prefix=prefixes)
def test_every_host_name_is_a_valid_interface_name_and_plain_iff_it_fits(
    name: str, prefix: str
) -> None:
    ifname = links.host_ifname(name, prefix)
    assert _valid_ifname(ifname), ifname
    assert ifname.startswith(prefix)
    if len(prefix + name) <= links.IFNAMSIZ:
        assert ifname == prefix + name
    else:
        assert "_" in ifname[len(prefix) :]


@given(data=st.data(), name=agent_names, prefix=prefixes)
def test_a_hashed_host_name_is_never_the_plain_name_of_another_agent(
    data: st.DataObject, name: str, prefix: str
) -> None:
    hashed = links.host_ifname(name, prefix)
    other = data.draw(lookalike(hashed, prefix))
    if AGENT_NAME_RE.fullmatch(other) and other != name:
        assert links.host_ifname(other, prefix) != hashed, (name, other)


def test_the_names_that_shared_a_veth_do_not_any_more() -> None:
    # The attack review's pair: "hv-abcdefghijklm" is 16 bytes, so it is hashed.
    assert links.host_ifname("abcdefghijklm") != links.host_ifname("abcde-2c47bd")
    assert links.host_ifname("abcde-2c47bd") == "hv-abcde-2c47bd"


def test_two_agents_whose_names_collided_both_come_up_each_isolated() -> None:
    """Up the long name, then the agent named like its hashed veth: two veths, two
    ``cont_if`` entries (the second up() was refused - or worse - with one name)."""
    require_root()
    names = fresh_names()
    long = "abcdefghijklm"
    short = links.host_ifname(long, names.ifprefix)[len(names.ifprefix) :].replace("_", "-")
    assert AGENT_NAME_RE.fullmatch(short)
    with managed(names, make_policy(names, HTTP_EGRESS)) as m:
        m.ensure_table()
        a, b = m.up(long), m.up(short)
        assert a.host_ifname != b.host_ifname
        with IPRoute() as ipr:
            for c in (a, b):
                assert ipr.link_lookup(ifname=c.host_ifname), c.host_ifname
        live = m.nft.live()
        assert live is not None
        assert {a.host_ifname, b.host_ifname} <= set(live["sets"]["cont_if"]["elements"])
        assert m.drift().in_sync
