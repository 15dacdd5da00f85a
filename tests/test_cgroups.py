"""Reading a host's cgroup layout and what a set of agent limits writes (pure parts).

The real groups (an agent killed at its memory limit, held to its tasks and
CPU quota) are in ``tests/priv/test_agent_limits.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enforcer.cgroups import (
    CPU_PERIOD_US,
    CgroupError,
    Limits,
    discover,
    oom_kills,
    own_paths,
    parse_mountinfo,
    settings,
)
from enforcer.config import AgentsConfig, ConfigError
from enforcer.priv import agent_limits

# A hybrid host as this project's CI machines are: v1 controllers, an empty v2 mount.
HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_CGROUP = """\
9:name=systemd:/
8:pids:/system.slice/hive-priv.service
4:memory:/process_api/25cd
1:cpu,cpuacct:/
0::/system.slice/hive-priv.service
"""
# A systemd host of today: cgroup v2 only.
V2_MOUNTINFO = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V2_CGROUP = "0::/system.slice/hive-priv.service\n"


def test_a_hybrid_host_uses_each_v1_hierarchy_beneath_hive_privs_own_group() -> None:
    layout = discover(HYBRID_MOUNTINFO, HYBRID_CGROUP, "hive-agents")
    assert layout.version == 1
    assert layout.agent_dirs("alpha") == {
        "memory": Path("/sys/fs/cgroup/memory/process_api/25cd/hive-agents/a-alpha"),
        "pids": Path("/sys/fs/cgroup/pids/system.slice/hive-priv.service/hive-agents/a-alpha"),
        "cpu": Path("/sys/fs/cgroup/cpu,cpuacct/hive-agents/a-alpha"),
    }
    assert layout.homes["cpu"] == Path("/sys/fs/cgroup/cpu,cpuacct")


def test_a_v2_host_puts_agents_at_the_top_and_hive_priv_stays_in_its_unit() -> None:
    layout = discover(V2_MOUNTINFO, V2_CGROUP, "hive-agents")
    assert layout.version == 2
    assert set(layout.agent_dirs("alpha").values()) == {Path("/sys/fs/cgroup/hive-agents/a-alpha")}
    assert set(layout.homes.values()) == {Path("/sys/fs/cgroup/system.slice/hive-priv.service")}


def test_a_host_without_the_controllers_is_refused_by_name() -> None:
    only_memory = "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    with pytest.raises(CgroupError, match=r"missing: pids, cpu"):
        discover(only_memory, "4:memory:/\n", "hive-agents")


def test_a_group_outside_the_mounted_root_is_refused() -> None:
    # A mount of a sub-tree (a container's view) that does not contain our group.
    texts = (
        "35 31 0:32 /lxc/other /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "39 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
    )
    with pytest.raises(CgroupError, match="memory group /lxc/mine is not visible"):
        discover(texts, "4:memory:/lxc/mine\n8:pids:/\n1:cpu,cpuacct:/\n", "hive-agents")


def test_mountinfo_escapes_are_read_and_other_file_systems_ignored() -> None:
    text = "50 31 0:40 / /sys/fs/cgroup/my\\040pids rw - cgroup cgroup rw,pids\n" + (
        "51 23 0:41 / /tmp rw - tmpfs tmpfs rw\n"
    )
    (mount,) = parse_mountinfo(text)
    assert mount.mountpoint == Path("/sys/fs/cgroup/my pids")
    assert mount.controllers == frozenset({"pids"})


def test_own_paths_names_every_controller_of_a_shared_hierarchy() -> None:
    assert own_paths(HYBRID_CGROUP)["cpuacct"] == "/"
    assert own_paths(HYBRID_CGROUP)[""] == "/system.slice/hive-priv.service"


def test_v1_limits_lift_memory_and_swap_first_and_cap_the_cpu_per_period() -> None:
    written = [(s.file, s.value) for s in settings(Limits(64 << 20, cpu=0.5, pids=32), version=1)]
    assert written == [
        ("memory.memsw.limit_in_bytes", "-1"),
        ("memory.limit_in_bytes", str(64 << 20)),
        ("memory.memsw.limit_in_bytes", str(64 << 20)),
        ("pids.max", "32"),
        ("cpu.cfs_period_us", str(CPU_PERIOD_US)),
        ("cpu.cfs_quota_us", str(CPU_PERIOD_US // 2)),
    ]


def test_v2_limits_forbid_swap_and_write_quota_and_period_together() -> None:
    written = {s.file: s.value for s in settings(Limits(64 << 20, cpu=2.0, pids=32), version=2)}
    assert written == {
        "memory.max": str(64 << 20),
        "memory.swap.max": "0",
        "pids.max": "32",
        "cpu.max": f"{2 * CPU_PERIOD_US} {CPU_PERIOD_US}",
    }


@given(
    st.one_of(st.none(), st.integers(16 << 20, 1 << 40)),
    st.one_of(st.none(), st.floats(0.01, 64)),
    st.one_of(st.none(), st.integers(1, 1 << 20)),
    st.sampled_from([1, 2]),
)
def test_property_an_unset_limit_writes_nothing_and_a_set_one_is_always_written(
    memory: int | None, cpu: float | None, pids: int | None, version: int
) -> None:
    written = settings(Limits(memory, cpu, pids), version)
    controllers = {s.controller for s in written if not s.optional}
    assert ("memory" in controllers) == (memory is not None)
    assert ("cpu" in controllers) == (cpu is not None)
    assert ("pids" in controllers) == (pids is not None)
    for s in written:
        # The kernel's minimum quota (1 ms) is kept whatever the fraction.
        if s.file in {"cpu.cfs_quota_us", "cpu.max"}:
            assert int(s.value.split()[0]) >= 1000


def test_agents_config_zero_means_unbounded_and_tiny_values_are_refused() -> None:
    from enforcer.config import HiveConfig

    limits = agent_limits(HiveConfig(agents=AgentsConfig(memory_max_bytes=0, cpu_max=0)))
    assert limits == Limits(memory_bytes=None, cpu=None, pids=512)
    assert not agent_limits(HiveConfig(agents=AgentsConfig(0, 0, 0))).bounded
    with pytest.raises(ConfigError, match=r"memory_max_bytes must be 0 \(unbounded\) or at least"):
        AgentsConfig(memory_max_bytes=1000)
    with pytest.raises(ConfigError, match="cpu_max must be a number from 0 to 4096"):
        AgentsConfig(cpu_max=-1)
    with pytest.raises(ConfigError, match=r"tasks_max must be 0 \(unbounded\) or at least 16"):
        AgentsConfig(tasks_max=4)


def test_oom_kills_are_read_from_either_versions_file() -> None:
    v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"
    v2 = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n"
    assert (oom_kills(v1), oom_kills(v2)) == (3, 2)
    with pytest.raises(ValueError, match="no oom_kill line"):
        oom_kills("oom_kill_disable 0\nunder_oom 0\n")
