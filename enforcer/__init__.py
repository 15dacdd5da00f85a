"""hive-boundary: the policy engine and the daemons that enforce it.

Layout (one module per concern):

- ``enforcer.policy``  - load, validate, compile, explain and reload the one policy
- ``enforcer.core``    - the core daemon (``create_app``): operator API on core.sock,
                         agent API on agents/<name>.sock
- ``enforcer.gateway`` - the gateway (``create_app``): the operator's one origin
- ``enforcer.priv``    - hive-priv, the socket-activated root helper
- ``enforcer.authz``   - route -> action binding and the default-deny middleware
- ``enforcer.audit``   - ``hive-boundary audit``
- ``enforcer.cli``     - the ``hive-boundary`` command
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
