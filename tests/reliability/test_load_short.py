"""Under load (agents on their sockets, the operator through the gateway, a policy
reload every second, hostile clients), every answer is the policy's decision,
nothing answers 5xx, and every decision is logged exactly once.

The short version of ``bench/load.py`` (20 agents x 3 s): correctness figures
only, never timing.
"""

from __future__ import annotations

from bench.load import run_load


def test_under_load_every_decision_is_right_logged_once_and_nothing_fails() -> None:
    r = run_load(agents=20, seconds=3.0, hostile=True)
    assert r.requests > 200, r
    assert r.status_5xx == 0, r.samples
    assert r.wrong_decisions == 0, r.samples["wrong"]
    assert r.client_errors == 0, r.samples["errors"]
    # Exactly once: no request id twice, and per (principal, action, decision)
    # the logs count what the clients counted; each denial's id is in the log.
    assert r.duplicate_request_ids == 0
    assert r.tally_mismatches == 0, r.samples["mismatches"]
    assert r.deny_ids_not_logged_once == 0
    assert r.decisions_logged_core > 200
    # Reloads during the load: every one accepted, no request failed because of one.
    assert r.reloads >= 1
    assert r.failed_reloads == 0, r.samples["failed_reloads"]
    # Hostile clients were really there, and the daemons let go of them afterwards.
    assert r.hostile["slowloris_open"] == 100
    assert r.hostile["idle_open"] == 400
    for proc in ("core", "gateway"):
        assert r.fds["peak"][proc] > r.fds["before"][proc]  # the load was seen ...
        assert r.fds["after"][proc] <= r.fds["before"][proc] + 3  # ... and released
