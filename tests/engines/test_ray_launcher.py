"""The Ray cluster launcher's own path: `ray up` of infra/ray/cluster-local.yaml (a head on
127.0.0.2 and a worker on 127.0.0.3, each reached through an SSH server of its own started
here), `ray submit` of jobs/curate.py with a text config and a download config, `ray down`;
and the local config held to the cloud one (infra/ray/cluster.yaml).

Each node's SSH server runs as the first process of a PID namespace of its own (`unshare
--pid`: root, or sudo without a password): what a node starts lives there, so the `ray stop`
in the start commands and in `ray down` stops that node only, as on separate machines, and
no other Ray on this machine. The sessions get a home and a TMPDIR of their own (`SetEnv`);
each home has `curate` linked to this checkout (its rsync finds every file up to date and
infra/setup.sh finds .venv installed) and a .bashrc putting an `ssh` that adds the servers'
port first on PATH (SSH below); the ray CLI gets the same PATH, and runs with autoscaler v1
(RAY_UP_enable_autoscaler_v2=0, as cluster-local.yaml says)."""
import contextlib
import getpass
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

from pipeline.core import storage
from tests.engines.test_ray_cluster import free_port
from tests.support import ROOT, kept_uids, ledger_rows, run, text_config, write_sample

BIN = Path(sys.executable).parent
CLOUD, LOCAL = ROOT / "infra" / "ray" / "cluster.yaml", ROOT / "infra" / "ray" / "cluster-local.yaml"
PROVIDER_KEYS = {"provider", "auth", "max_workers", "available_node_types", "head_node_type"}
MARK = "CURATE_LAUNCHER_TEST"   # in the environment of every process the slow test starts
_ADDRESSES = yaml.safe_load(LOCAL.read_text())["provider"]
NODES = {"head": _ADDRESSES["head_ip"], "worker": _ADDRESSES["worker_ips"][0]}
# `ssh` for the ray CLI and the nodes: Ray's SSH runner has no port setting, and OpenSSH reads
# `~` in `-i ~/ray_bootstrap_key.pem` (the head's key to the workers) as the passwd home, not $HOME
SSH = """#!/bin/sh
key=""
for a in "$@"; do
  if [ -n "$key" ]; then case "$a" in "~/"*) a="$HOME/${a#??}";; esac; fi
  if [ "$a" = "-i" ]; then key=1; else key=""; fi
  set -- "$@" "$a"
  shift
done
exec /usr/bin/ssh -p PORT "$@"
"""


def test_the_local_config_is_the_cloud_config_on_another_provider():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cloud, local = (yaml.safe_load(p.read_text()) for p in (CLOUD, LOCAL))
    assert set(cloud) ^ set(local) <= PROVIDER_KEYS
    assert {k: v for k, v in cloud.items() if k not in PROVIDER_KEYS} == \
           {k: v for k, v in local.items() if k not in PROVIDER_KEYS}
    assert (cloud["provider"]["type"], local["provider"]["type"]) == ("aws", "local")
    for config in (cloud, local):
        validate_config(prepare_config(config))   # Ray's schema: no unknown or misspelt key
        assert "docker" not in config   # the nodes run what setup_commands install
    for path in (CLOUD, LOCAL):   # both say so
        assert "differ only in `provider`, `auth` and the node types" in " ".join(path.read_text().split())


def _marked(token: str) -> dict[int, str]:
    """pid -> program of the live processes carrying MARK=token in their environment."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            program = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if f"{MARK}={token}".encode() in environ:
            found[int(pid)] = program
    return found


def _is_ssh(program: str) -> bool:
    return os.path.basename(program.split(":")[0].split(" ")[0]) in {"ssh", "sshd", "sshd-session", "unshare"}


def _wait_until(condition, seconds: float, what: str):
    deadline = time.time() + seconds
    while not (result := condition()):
        assert time.time() < deadline, what
        time.sleep(1)
    return result


def _privilege() -> list[str]:
    if os.getuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    pytest.fail("this test needs root or sudo without a password: each node's SSH server runs in a PID "
                "namespace of its own (unshare --pid)")


class Nodes:
    """The head's and the worker's SSH servers, on one free port of their two addresses."""

    def __init__(self, base: Path, token: str):
        assert Path("/usr/sbin/sshd").exists(), "no /usr/sbin/sshd: run infra/setup.sh (openssh-server)"
        self.base, self.token, self.port, self.sudo = base, token, free_port(), _privilege()
        self.servers: dict[str, subprocess.Popen] = {}
        self.key = base / "key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        (base / "authorized_keys").write_text((base / "key.pub").read_text())
        (base / "bin").mkdir()
        ssh = base / "bin" / "ssh"
        ssh.write_text(SSH.replace("PORT", str(self.port)))
        ssh.chmod(0o755)
        if not Path("/run/sshd").is_dir():   # sshd's privilege separation folder (made by its service)
            subprocess.run([*self.sudo, "mkdir", "-p", "/run/sshd"], check=True)

    def start(self) -> None:
        for name, address in NODES.items():
            home = self.base / name
            (home / "t").mkdir(parents=True)
            (home / "curate").symlink_to(ROOT)
            (home / ".bashrc").write_text(f'export PATH="{self.base}/bin:$PATH"\n')
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.base / f"host_{name}")],
                           check=True)
            config = self.base / f"sshd_{name}"
            config.write_text("\n".join([
                f"ListenAddress {address}:{self.port}", f"HostKey {self.base}/host_{name}",
                f"AuthorizedKeysFile {self.base}/authorized_keys", "PidFile none", "UsePAM no", "StrictModes no",
                "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
                f"SetEnv HOME={home} TMPDIR={home}/t {MARK}={self.token}",
            ]) + "\n")
            with open(self.base / f"sshd_{name}.log", "wb") as log:
                self.servers[name] = subprocess.Popen(
                    [*self.sudo, "unshare", "--pid", "--fork", "--mount-proc", "/usr/sbin/sshd", "-D", "-e",
                     "-f", str(config)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                    env=dict(os.environ, **{MARK: self.token}))
            _wait_until(lambda address=address, name=name: self._listening(address, name), 60,
                        f"sshd for {name} does not listen on {address}:{self.port}")

    def stop_ray_on_worker(self, user: str, env) -> subprocess.CompletedProcess:
        return subprocess.run(["ssh", "-i", str(self.key), "-o", "StrictHostKeyChecking=no", "-o",
                               f"UserKnownHostsFile={os.devnull}", "-o", "IdentitiesOnly=yes",
                               f"{user}@{NODES['worker']}", "~/curate/.venv/bin/ray stop"],
                              env=env, capture_output=True, text=True, timeout=120)

    def _listening(self, address: str, name: str) -> bool:
        assert self.servers[name].poll() is None, (self.base / f"sshd_{name}.log").read_text()
        with socket.socket() as s:
            return s.connect_ex((address, self.port)) == 0

    def stop(self) -> None:
        """SIGTERM each node's sshd, the first process of its namespace (the kernel then kills
        what is left there); SIGKILL after a minute."""
        for signal in ("TERM", "KILL"):
            for server in self.servers.values():
                if (pid := _sshd_under(server.pid)) is not None:
                    subprocess.run([*self.sudo, "kill", f"-{signal}", str(pid)], capture_output=True)
            try:
                for server in self.servers.values():
                    server.wait(timeout=60)
                return
            except subprocess.TimeoutExpired:
                continue


def _sshd_under(pid: int) -> int | None:
    """The sshd under `pid` (unshare, or sudo then unshare): its first descendant named sshd."""
    while True:
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "sshd":
                return pid
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return None
        if not children:
            return None
        pid = int(children[0])


def _ray(*args, env, timeout=600) -> str:
    result = subprocess.run([str(BIN / "ray"), *args], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout, start_new_session=True)
    assert result.returncode == 0, f"ray {args[0]}: " + result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout + result.stderr


def _alive_nodes(env) -> int:
    import json

    result = subprocess.run([str(BIN / "ray"), "list", "nodes", "--format=json", f"--address={NODES['head']}:6379"],
                            env=env, capture_output=True, text=True, timeout=60)
    return sum(n["state"] == "ALIVE" for n in json.loads(result.stdout)) if result.returncode == 0 else 0


def download_config(web, folder: Path, output, engine: str) -> dict:
    """48 world images on the loopback web in parts of 12 rows, downloaded, deduplicated, sharded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.support import serve_world

    pairs = folder / "pairs.parquet"
    if not pairs.exists():
        urls, texts = serve_world(web, 48)
        pq.write_table(pa.table({"url": urls, "text": texts}), pairs)
    return {"input": {"path": [str(pairs)], "part_rows": 12}, "output": str(output), "engine": engine,
            "processes": 2, "allow_networks": ["127.0.0.1/32"],
            "download": {"image_size": 64, "threads": 2, "timeout": 5, "part_rows": 12},
            "image_dedup": {"phash_distance": 0}, "shard": {"samples_per_shard": 8}}


@pytest.mark.slow   # a two-node Ray cluster brought up over SSH
def test_ray_up_submit_and_down_on_two_loopback_nodes(tmp_path):
    from pipeline.testing.fakeweb import FakeWeb

    token = uuid.uuid4().hex
    name = f"curate-test-{token[:8]}"
    base = Path(tempfile.mkdtemp(prefix="rayup", dir="/tmp"))   # short: Ray's socket paths live under it
    nodes = Nodes(base, token)
    config = yaml.safe_load(LOCAL.read_text())
    config["auth"] = {"ssh_user": getpass.getuser(), "ssh_private_key": str(nodes.key)}
    (base / "cluster.yaml").write_text(yaml.safe_dump(config))
    cluster = ["-n", name, str(base / "cluster.yaml")]
    env = dict(os.environ, PATH=f"{base}/bin:{BIN}:{os.environ['PATH']}", TMPDIR=str(base / "cli"),
               RAY_USAGE_STATS_ENABLED="0", RAY_UP_enable_autoscaler_v2="0", **{MARK: token})
    for key in ("RAY_ADDRESS", *storage.ENV_KEYS):
        env.pop(key, None)
    (base / "cli").mkdir()

    sample = write_sample(tmp_path / "s.parquet", rows=3000)
    run(text_config(sample, tmp_path / "text-local"))
    (tmp_path / "text.yaml").write_text(yaml.safe_dump(text_config(sample, tmp_path / "text-cluster", engine="ray")))
    try:
        nodes.start()
        with FakeWeb() as web:
            run(download_config(web, tmp_path, tmp_path / "dl-local", "local"))
            (tmp_path / "dl.yaml").write_text(yaml.safe_dump(download_config(web, tmp_path, tmp_path / "dl-cluster",
                                                                             "ray")))
            try:
                _ray("up", "-y", "--no-config-cache", *cluster, env=env)
                _wait_until(lambda: _alive_nodes(env) == 2, 300, "the worker did not join the head")
                for job in ("text", "dl"):
                    out = _ray("submit", "--no-config-cache", *cluster, "jobs/curate.py", "--",
                               "--config", str(tmp_path / f"{job}.yaml"), "--engine", "ray", env=env)
                    assert "running on the Ray cluster (2 node(s)" in out, out[-3000:]
            finally:   # as cluster-local.yaml says: `ray stop` on each worker, then `ray down`
                stopped = nodes.stop_ray_on_worker(config["auth"]["ssh_user"], env)
                _ray("down", "-y", *cluster, env=env, timeout=300)
        assert stopped.returncode == 0, stopped.stdout[-2000:] + stopped.stderr[-2000:]
        _wait_until(lambda: not [p for p in _marked(token).values() if not _is_ssh(p)], 120,
                    "Ray processes outlived `ray down`")
    finally:
        nodes.stop()
        try:
            _wait_until(lambda: not _marked(token), 60, "processes of the test outlived it")
        finally:
            for pid in _marked(token):
                subprocess.run([*nodes.sudo, "kill", "-KILL", str(pid)], capture_output=True)
            from ray.autoscaler._private.command_runner import HASH_MAX_LENGTH

            user, cluster_hash = (hashlib.sha256(s.encode()).hexdigest()[:HASH_MAX_LENGTH]
                                  for s in (getpass.getuser(), name))
            shutil.rmtree(f"/tmp/ray_ssh_{user}/{cluster_hash}", ignore_errors=True)
            with contextlib.suppress(OSError):   # Ray's folder of SSH control sockets, when no other cluster's
                os.rmdir(f"/tmp/ray_ssh_{user}")
            shutil.rmtree(base, ignore_errors=True)   # its `curate` links are removed, not followed
    for job in ("text", "dl"):
        assert kept_uids(tmp_path / f"{job}-cluster") == kept_uids(tmp_path / f"{job}-local")
        assert ledger_rows(tmp_path / f"{job}-cluster") == ledger_rows(tmp_path / f"{job}-local")
