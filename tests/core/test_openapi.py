"""The OpenAPI documents are true: generated from the route tables, checked by schemathesis
against the real core on its real unix sockets."""

from __future__ import annotations

import os
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enforcer.openapi import load_document
from enforcer.openapi.__main__ import documents
from tests.core.conftest import OPERATOR, CoreProcess
from tests.core.unixhttp import unix_session

# Operations that run arbitrary registered commands or never end are covered by
# dedicated tests instead of random data.
EXCLUDED = {"container.start", "container.restart", "events.read"}
EXAMPLES_PER_OPERATION = 8


def test_checked_in_documents_match_the_route_tables() -> None:
    fresh = documents()
    for surface in ("agent", "operator"):
        assert load_document(surface) == fresh[surface], "run: python -m enforcer.openapi"


def _run(document: dict[str, Any], session: Any) -> int:
    schema = schemathesis.openapi.from_dict(document)
    ran = 0
    for result in schema.get_all_operations():
        op = result.ok()  # type: ignore[union-attr]
        if op.definition.raw.get("x-hive-action") in EXCLUDED:
            continue
        _check_operation(op.as_strategy(), session)
        ran += 1
    return ran


def _check_operation(strategy: Any, session: Any) -> None:
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        case = data.draw(strategy)
        case.call_and_validate(session=session, base_url="http://unix")

    check()


def test_schemathesis_agent_surface(core_process: CoreProcess) -> None:
    core_process.start()
    op = unix_session(str(core_process.config.core_socket), OPERATOR)
    assert op.post("http://unix/api/agents", json={"name": "alpha", "uid": os.getuid()}).ok
    agent = unix_session(str(core_process.config.agent_socket("alpha")))
    assert _run(load_document("agent"), agent) >= 9
    core_process.stop()


def test_schemathesis_operator_surface(core_process: CoreProcess) -> None:
    core_process.start()
    op = unix_session(str(core_process.config.core_socket), OPERATOR)
    assert op.post("http://unix/api/agents", json={"name": "alpha", "uid": os.getuid()}).ok
    assert _run(load_document("operator"), op) >= 15
    core_process.stop()
