"""Casbin itself, as the reference the compiled index is proven against.

The policy lines we parsed and validated are fed to pycasbin programmatically
(never through its own file loader, which skips lines it does not know). The
raw ``Enforcer`` never leaves this module, and nothing here turns enforcement
off.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import casbin
from casbin.model import FastModel
from casbin.util.builtin_operators import key_match

from enforcer.policy.model import MODEL_TEXT
from enforcer.policy.syntax import SELF, agent_name
from enforcer.policy.types import AccessRequest, Grant, RoleLink, SourceLine

__all__ = ["CasbinReference", "res_match"]


def res_match(sub: str, obj: str, pattern: str) -> bool:
    """``resMatch(r.sub, r.obj, p.obj)``: ``{self}`` is the requesting agent's name
    (a line with ``{self}`` never matches a non-agent), then Casbin's ``keyMatch``."""
    if SELF in pattern:
        name = agent_name(sub)
        if name is None:
            return False
        pattern = pattern.replace(SELF, name)
    return bool(key_match(obj, pattern))


class CasbinReference:
    """A pycasbin enforcer loaded with exactly these lines.

    ``fast=True`` uses ``casbin.FastEnforcer`` keyed on (channel, action).
    """

    def __init__(self, grants: Iterable[Grant], links: Iterable[RoleLink], *, fast: bool = False):
        grants = list(grants)
        links = list(links)
        self._src: dict[tuple[str, ...], SourceLine] = {
            (g.sub, g.chan, g.obj, g.act): g.src for g in grants
        }
        e: Any
        if fast:
            # The policy store is keyed on (channel, action): the model
            # compares both with ==, so filtering on them is exact.
            model = FastModel([1, 3])
            model.load_model_from_text(MODEL_TEXT)
            e = casbin.FastEnforcer(model, cache_key_order=[1, 3])
        else:
            e = casbin.Enforcer(casbin.Enforcer.new_model(text=MODEL_TEXT))
        e.add_function("resMatch", res_match)
        # `g, agent:*, role:x`: names match patterns with keyMatch.
        if not e.add_named_matching_func("g", key_match):
            raise RuntimeError("pycasbin refused the g matching function")
        if links:
            e.add_grouping_policies([[lk.member, lk.role] for lk in links])
        if grants:
            e.add_policies([[g.sub, g.chan, g.obj, g.act] for g in grants])
        self._e = e

    def enforce(self, req: AccessRequest) -> bool:
        """Casbin's decision."""
        return bool(self._e.enforce(req.principal, req.channel, req.resource, req.action))

    def enforce_ex(self, req: AccessRequest) -> tuple[bool, SourceLine | None]:
        """Casbin's decision and the line it reports (the first that matched)."""
        ok, rule = self._e.enforce_ex(req.principal, req.channel, req.resource, req.action)
        return bool(ok), (self._src.get(tuple(rule)) if rule else None)
