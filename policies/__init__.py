"""The shipped, default hive-boundary policy (model, catalogue, policy, network, tests).

This package holds data only; `enforcer.policy` loads it. Locate it with
``importlib.resources.files("policies")``.
"""
