"""Network isolation: one netns + veth per container, one nftables table (``inet hive``).

- ``netns.ruleset``  - pure compiler: (network policy, inventory) -> desired ruleset data
- ``netns.apply``    - libnftables JSON transactions (the only code that talks to nftables)
- ``netns.links``    - pyroute2: namespaces, veths, addresses, routes
- ``netns.manager``  - fail-closed container bring-up / teardown, reconcile
- ``netns.probe``    - the connectivity probe and its truth table
"""
