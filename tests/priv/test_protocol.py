"""The hive-priv protocol: every request type is bound to a system-class action, strictly typed."""

from __future__ import annotations

import json

import pytest

from enforcer.config import default_policy_dir
from enforcer.errors import Conflict, Unavailable
from enforcer.policy import AuthorityClass, load_policy
from enforcer.priv_protocol import (
    REQUEST_TYPES,
    ContainerCreate,
    ContainerStatus,
    ProtocolError,
    StateRead,
    UnknownRequest,
    decode_request,
    decode_response,
    encode_error,
    encode_ok,
    encode_request,
    parse_status_result,
)


def test_every_request_type_is_bound_to_a_system_action_of_the_catalogue() -> None:
    policy = load_policy(default_policy_dir())
    bound = {cls.ACTION for cls in REQUEST_TYPES.values()}
    assert len(bound) == len(REQUEST_TYPES)  # one action per request type
    for kind, cls in REQUEST_TYPES.items():
        spec = policy.catalogue[cls.ACTION]
        assert spec.authority is AuthorityClass.SYSTEM, kind
        assert spec.resource.split("/")[1:2] == cls.RESOURCE.split("/")[1:2], kind
    # ... and every priv.* action of the catalogue has a request type.
    assert {a for a in policy.catalogue if a.startswith("priv.")} == bound


def test_round_trip() -> None:
    for req in (
        ContainerCreate("a1", ("/bin/true", "x")),
        StateRead("a1", "notes/x.txt"),
        ContainerStatus(),
    ):
        assert decode_request(encode_request(req)) == req


@pytest.mark.parametrize(
    "body",
    [
        {"request": "container.create", "agent": "a", "command": "/bin/sh"},
        {"request": "container.create", "agent": "a", "command": []},
        {"request": "container.create", "agent": "a", "command": ["sh"]},
        {"request": "container.create", "agent": "a", "command": ["/bin/sh", 1]},
        {"request": "container.start", "agent": "A"},
        {"request": "container.start", "agent": "a" * 26},
        {"request": "container.start", "agent": True},
        {"request": "container.start", "agent": "a", "extra": None},
        {"request": "state.read", "agent": "a", "rel_path": "a/../../etc"},
        {"request": "state.read", "agent": "a"},
        {"request": 1},
        {"agent": "a"},
        {"request": "container.status", "agent": "a"},
        {"request": "container.status", "agents": ["a"]},
        {"request": "container.status", "agent": None},
    ],
)
def test_schema_violations_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(ProtocolError):
        decode_request(json.dumps(body).encode())


def test_unknown_request_is_its_own_error() -> None:
    with pytest.raises(UnknownRequest):
        decode_request(b'{"request":"exec","agent":"a"}')


def test_responses_carry_the_error_class_back() -> None:
    assert decode_response(encode_ok({"x": 1})) == {"x": 1}
    with pytest.raises(Conflict, match="busy"):
        decode_response(encode_error(Conflict("busy")))


def test_the_status_request_is_about_the_collection_of_agents() -> None:
    req = decode_request(b'{"request":"container.status"}')
    assert req == ContainerStatus()
    assert (req.resource(), req.ACTION) == ("agents", "priv.container.status")
    assert encode_request(req) == b'{"request":"container.status"}\n'


def test_a_status_result_is_checked_whole() -> None:
    good = {"containers": {"a1": {"agent": "a1", "state": "failed", "exit_code": -9}}}
    assert parse_status_result(good) == good["containers"]
    assert parse_status_result({"containers": {}}) == {}


@pytest.mark.parametrize(
    "result",
    [
        {},
        {"containers": []},
        {"containers": {"A1": {"agent": "A1", "state": "running"}}},
        {"containers": {"../x": {"agent": "../x", "state": "running"}}},
        {"containers": {"a1": {"agent": "b1", "state": "running"}}},
        {"containers": {"a1": {"agent": "a1", "state": 1}}},
        {"containers": {"a1": "running"}},
    ],
)
def test_a_malformed_status_result_is_refused_not_half_read(result: dict[str, object]) -> None:
    with pytest.raises(Unavailable):
        parse_status_result(result)
