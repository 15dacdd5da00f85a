"""A compromised core cannot steer hive-priv (root) through files it can write.

Production layout: RUN and STATE are root:hive-core 1775, so the core may
create files in both. hive-priv's own files there - the network inventory
and its lock and temporary file in RUN, the container records in STATE/priv -
must never be written through something the core planted, nor believed when
the core made them. Each test plants as the core's uid, then acts as the core
does (requests over priv.sock); found by an attack review.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.priv.conftest import SYSTEM_PYTHON, PrivEnv, run_as

SEND = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(60); s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
print(s.makefile("rb").readline().decode())
"""


def _production_layout(env: PrivEnv) -> None:
    # As hive-core.service makes them: install -d -o root -g hive-core -m 1775
    for d in (env.run_dir, env.state_dir):
        os.chown(d, 0, env.core.gid)
        os.chmod(d, 0o1775)


def _as_core(env: PrivEnv, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_as(env.core, code, *args)


def _request(env: PrivEnv, req: dict[str, object]) -> dict[str, object]:
    out = _as_core(env, SEND, str(env.socket), json.dumps(req))
    assert out.returncode == 0, out.stderr + env.log()[-2000:]
    reply: dict[str, object] = json.loads(out.stdout)
    return reply


def _victim(env: PrivEnv) -> Path:
    victim = env.base / "victim"  # stands for /etc/shadow: root's, 0600
    victim.write_text("root:$y$precious:19000:0:99999:7:::\n")
    victim.chmod(0o600)
    return victim


def test_symlinks_planted_at_the_inventorys_names_are_never_written_through(
    priv_env: PrivEnv,
) -> None:
    env = priv_env
    _production_layout(env)
    victim = _victim(env)
    stem = env.run_dir / f"netns-{env.table}"
    for suffix in (".tmp", ".lock"):
        planted = _as_core(
            env,
            "import os,sys; os.symlink(sys.argv[1], sys.argv[2])",
            str(victim),
            f"{stem}{suffix}",
        )
        assert planted.returncode == 0, planted.stderr
    env.start()
    # The lock is the core's symlink: hive-priv refuses to start on it (its
    # table and inventory are taken under that lock), and writes nothing.
    out = _as_core(env, SEND, str(env.socket), '{"request":"container.status"}')
    assert out.returncode != 0 or not json.loads(out.stdout).get("ok", False)
    assert "is a symlink someone planted" in env.log()
    assert victim.read_text().startswith("root:$y$precious")
    assert oct(victim.stat().st_mode & 0o777) == oct(0o600)


def test_an_inventory_the_core_wrote_is_refused_not_believed(priv_env: PrivEnv) -> None:
    env = priv_env
    _production_layout(env)
    # Before hive-priv first writes it, the core puts its own inventory in place
    # (one that would have root re-apply the table without some container).
    inventory = env.run_dir / f"netns-{env.table}.json"
    forged = json.dumps({"table": env.table, "prefix": env.netns_prefix, "containers": {}})
    made = _as_core(
        env, "import sys; open(sys.argv[1],'w').write(sys.argv[2])", str(inventory), forged
    )
    assert made.returncode == 0, made.stderr
    env.start()
    out = _as_core(env, SEND, str(env.socket), '{"request":"container.status"}')
    assert out.returncode != 0 or not json.loads(out.stdout).get("ok", False)
    assert "not an inventory this manager wrote" in env.log()


def test_the_inventory_is_written_by_root_under_a_fresh_name(priv_env: PrivEnv) -> None:
    env = priv_env
    _production_layout(env)
    stem = env.run_dir / f"netns-{env.table}"
    # The core keeps a file of its own at the old fixed temporary name.
    made = _as_core(env, "import sys; open(sys.argv[1],'w').write('core')", f"{stem}.tmp")
    assert made.returncode == 0, made.stderr
    env.start()
    name = env.agent_name()
    reply = _request(
        env, {"request": "container.create", "agent": name, "command": [SYSTEM_PYTHON, "-c", "1"]}
    )
    assert reply["ok"], reply
    inventory = Path(f"{stem}.json")
    assert inventory.stat().st_uid == 0
    assert name in json.loads(inventory.read_text())["containers"]
    assert Path(f"{stem}.tmp").read_text() == "core"  # never used, never written


def test_a_records_directory_the_core_made_first_stops_hive_priv_cold(
    priv_env: PrivEnv,
) -> None:
    env = priv_env
    _production_layout(env)
    doomed = env.base / "precious-dir"
    doomed.mkdir()
    (doomed / "keep").write_text("x")
    # Before hive-priv's first start, the core makes STATE/priv and a record
    # telling recovery to undo a "pending" destroy that names doomed.
    records = {
        "version": 1,
        "containers": {
            "ghost": {
                "name": "ghost",
                "uid": 12345,
                "gid": 12345,
                "user": "ghost",
                "user_created": True,
                "command": ["true"],
                "state": "stopped",
                "made_dirs": [str(doomed)],
                "pending": "destroy",
            }
        },
    }
    made = _as_core(
        env,
        "import os,sys; d=sys.argv[1]; os.mkdir(d, 0o700); open(d+'/containers.json','w')"
        ".write(sys.argv[2])",
        str(env.state_dir / "priv"),
        json.dumps(records),
    )
    assert made.returncode == 0, made.stderr
    env.start()
    out = _as_core(env, SEND, str(env.socket), '{"request":"container.status"}')
    assert out.returncode != 0 or not json.loads(out.stdout).get("ok", False)
    assert (doomed / "keep").exists(), "recovery believed the core's record"
    assert "must be a directory owned by uid 0" in env.log()
