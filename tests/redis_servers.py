"""Real Redis servers for tests, started from the `redis-server` binary on free loopback ports.

- `RedisServer`: one standalone server in a temp dir of its own that a test can stop, kill and
  restart on the same port (Redis-restart fault tests).
- `RedisClusterNodes`: a Redis Cluster of N masters (and optional replicas), each a
  `RedisServer`, created with `redis-cli --cluster create`; `url` is the
  `redis+cluster://` URL that `shared.connections.connect` understands.
- `redis_server()` (yields the `RedisServer`) / `redis_cluster()` (yields the URL): context
  managers around both.

A missing binary raises `RedisBinaryMissing`; the fixtures in tests/conftest.py turn that into a
skip locally and a failure under CI=true. `REDIS_SERVER_BIN` / `REDIS_CLI_BIN` override the
binaries found on PATH.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import redis

CLUSTER_SCHEME = "redis+cluster://"


class RedisBinaryMissing(RuntimeError):
    """`redis-server` or `redis-cli` is not installed."""


class RedisServerError(RuntimeError):
    """A server or cluster did not come up (the message carries the log tail)."""


def free_port() -> int:
    """A port the OS just reported free on 127.0.0.1 (it may be taken again before use)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def binary(name: str) -> str:
    """Path of `redis-server` / `redis-cli` (env `REDIS_SERVER_BIN` / `REDIS_CLI_BIN` first)."""
    variable = name.upper().replace("-", "_") + "_BIN"
    found = os.environ.get(variable) or shutil.which(name)
    if not found or not os.access(found, os.X_OK):
        raise RedisBinaryMissing(f"{name} not found (install Redis, or set {variable})")
    return found


class RedisServer:
    """One `redis-server` process on 127.0.0.1, with a working dir of its own.

    The port is fixed at the first successful `start()` and kept by `restart()`, so clients
    configured with `url` reconnect to the same address. No persistence unless `args` asks
    for it (the defaults are `--save "" --appendonly no`; later args override them).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        args: Sequence[str] = (),
        directory: str | Path | None = None,
    ) -> None:
        self._binary = binary("redis-server")
        self._fixed_port = port is not None
        self.port = port or free_port()
        self.args = list(args)
        self._own_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="vx-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.dir / "redis.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, **kwargs: object) -> redis.Redis:
        """A synchronous client straight to this server (no cluster routing)."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=2, **kwargs)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING. Idempotent while running."""
        if self.running:
            return self
        for attempt in range(3):
            self._spawn()
            try:
                self._wait_ready(timeout)
                self._fixed_port = True  # from now on the server lives on this port
                return self
            except RedisServerError:
                self.kill()
                # The OS-picked port may have been taken between free_port() and bind().
                if self._fixed_port or attempt == 2 or "in use" not in self.log_tail():
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        command = [
            self._binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--logfile",
            str(self.log_file),
            "--daemonize",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            *self.args,
        ]
        self.proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = self.client(socket_timeout=1)
        try:
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    stderr = (
                        self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                    )
                    raise RedisServerError(
                        f"redis-server on {self.port} exited with {self.proc.returncode}: "
                        f"{stderr}\n{self.log_tail()}"
                    )
                with contextlib.suppress(redis.RedisError, OSError):
                    if client.ping():
                        return
                if time.monotonic() > deadline:
                    raise RedisServerError(
                        f"redis-server on {self.port} not ready in {timeout}s\n{self.log_tail()}"
                    )
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown (SIGTERM: clients see the connection close); kills on timeout."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reap()

    def kill(self) -> None:
        """SIGKILL: the server vanishes without closing anything gracefully."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reap()

    def restart(self, *, kill: bool = False, down_for: float = 0.0, timeout: float = 10.0) -> None:
        """Stop (or kill) the server, stay down `down_for` seconds, start it on the same port."""
        if kill:
            self.kill()
        else:
            self.stop()
        if down_for:
            time.sleep(down_for)
        self.start(timeout)

    def _reap(self) -> None:
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def close(self) -> None:
        """Kill the server and remove its directory (when this object created it)."""
        self.kill()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class RedisClusterNodes:
    """A Redis Cluster of `masters` masters (and `replicas` replicas per master) on loopback.

    Each node is a `RedisServer` with `--cluster-enabled yes` and its `nodes.conf` in its own
    dir, so a node restarted with `restart()` rejoins the cluster with its old identity. The
    cluster bus uses a separately picked free port (`--cluster-port`), not port+10000.
    """

    def __init__(self, masters: int = 3, *, replicas: int = 0, node_timeout_ms: int = 2000) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        binary("redis-server")  # fail early, before any node starts
        self._cli = binary("redis-cli")
        self.masters = masters
        self.replicas = replicas
        self.nodes: list[RedisServer] = []
        self._node_timeout_ms = node_timeout_ms

    @property
    def url(self) -> str:
        """`redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...`: every node is a seed."""
        return CLUSTER_SCHEME + ",".join(node.address for node in self.nodes)

    def start(self, timeout: float = 30.0) -> RedisClusterNodes:
        try:
            for _ in range(self.masters * (1 + self.replicas)):
                node = RedisServer(
                    args=[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        str(self._node_timeout_ms),
                        "--cluster-port",
                        str(free_port()),
                        # Replicas sync at once instead of waiting 5 s for more replicas.
                        "--repl-diskless-sync-delay",
                        "0",
                    ]
                )
                self.nodes.append(node)
                node.start()
            create = [
                self._cli,
                "--cluster",
                "create",
                *(node.address for node in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ]
            result = subprocess.run(create, capture_output=True, text=True, timeout=timeout)
            if result.returncode != 0:
                raise RedisServerError(
                    f"redis-cli --cluster create failed ({result.returncode}):\n"
                    f"{result.stdout}\n{result.stderr}"
                )
            self.wait_ok(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def wait_ok(self, timeout: float = 30.0, nodes: Sequence[RedisServer] | None = None) -> None:
        """Wait until every (running) node reports cluster_state:ok and, with replicas, every
        replica's link to its master is up."""
        deadline = time.monotonic() + timeout
        pending = list(nodes if nodes is not None else self.nodes)
        last = ""
        while pending:
            node = pending[0]
            if not node.running:
                pending.pop(0)
                continue
            client = node.client(socket_timeout=2)
            try:
                info = client.cluster("INFO")
                ok = info.get("cluster_state") == "ok"
                if ok and self.replicas:
                    replication = client.info("replication")
                    ok = replication.get("role") == "master" or (
                        replication.get("master_link_status") == "up"
                    )
                    # Every node must know every replica as one, or a failover finds no
                    # majority to vote for it.
                    lines = client.execute_command("CLUSTER NODES")
                    lines = lines.decode() if isinstance(lines, bytes) else lines
                    if isinstance(lines, dict):  # redis-py parsed it: {address: {flags: ...}}
                        flags = [entry["flags"] for entry in lines.values()]
                    else:
                        flags = [line.split()[2] for line in lines.splitlines() if line.strip()]
                    replicas_known = sum("slave" in f for f in flags)
                    ok = ok and replicas_known == self.masters * self.replicas
                last = f"{node.address}: {info}"
            except (redis.RedisError, OSError) as exc:
                ok = False
                last = f"{node.address}: {exc}"
            finally:
                client.close()
            if ok:
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise RedisServerError(f"cluster not ok within {timeout}s; last: {last}")
            time.sleep(0.05)

    def _ask(self, *command: object) -> Any:
        """Run a command on the first running node that answers."""
        for node in self.nodes:
            if not node.running:
                continue
            client = node.client(socket_timeout=2)
            try:
                return client.execute_command(*command)
            except (redis.RedisError, OSError):
                continue
            finally:
                client.close()
        raise RedisServerError(f"no running node answered {command!r}")

    def slot_of(self, key: str | bytes) -> int:
        return int(self._ask("CLUSTER KEYSLOT", key))

    def owner_of_slot(self, slot: int) -> RedisServer:
        """The master serving `slot` now, as the first running node sees it."""
        for start, end, primary, *_ in self._ask("CLUSTER SLOTS"):
            if start <= slot <= end:
                port = int(primary[1])
                return next(n for n in self.nodes if n.port == port)
        raise RedisServerError(f"slot {slot} is not served")

    def node_for_key(self, key: str | bytes) -> RedisServer:
        """The master serving `key`'s slot now (the map changes on moves and failovers)."""
        return self.owner_of_slot(self.slot_of(key))

    def primaries(self) -> list[RedisServer]:
        """Running nodes that serve at least one slot."""
        ports = {int(primary[1]) for _, _, primary, *_ in self._ask("CLUSTER SLOTS")}
        return [n for n in self.nodes if n.port in ports and n.running]

    @staticmethod
    def node_id(node: RedisServer) -> str:
        client = node.client(socket_timeout=2)
        try:
            raw = client.execute_command("CLUSTER MYID")
            return raw.decode() if isinstance(raw, bytes) else str(raw)
        finally:
            client.close()

    def move_slot(self, slot: int, target: RedisServer) -> RedisServer:
        """Migrate `slot` (and its keys) to master `target` the way `redis-cli --cluster
        reshard` does; every node learns the new owner before this returns. Returns the old
        owner. Clients holding the old map get MOVED; shard-channel subscribers on the old
        owner get a `sunsubscribe` pushed by the server."""
        source = self.owner_of_slot(slot)
        if source is target:
            return source
        source_id, target_id = self.node_id(source), self.node_id(target)
        src, dst = source.client(socket_timeout=5), target.client(socket_timeout=5)
        try:
            dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
            src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
            while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
                src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
            for node in [target, source, *(n for n in self.nodes if n not in (source, target))]:
                if node.running:
                    client = node.client(socket_timeout=5)
                    try:
                        client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
                    finally:
                        client.close()
        finally:
            src.close()
            dst.close()
        return source

    def replica_of(self, master: RedisServer) -> RedisServer:
        """A running replica of `master` (needs `replicas >= 1`)."""
        for node in self.nodes:
            if node is master or not node.running:
                continue
            client = node.client(socket_timeout=2)
            try:
                replication = client.info("replication")
            finally:
                client.close()
            if replication.get("role") == "slave" and replication.get("master_port") == master.port:
                return node
        raise RedisServerError(f"{master.address} has no running replica")

    def failover(self, replica: RedisServer, timeout: float = 10.0) -> None:
        """Manual failover (`CLUSTER FAILOVER` on `replica`): the replica becomes the master of
        its shard, the old master its replica; waits until the cluster's slot map says so."""
        client = replica.client(socket_timeout=5)
        try:
            master_port = client.info("replication")["master_port"]
            slot = next(
                start
                for start, _, primary, *_ in client.execute_command("CLUSTER SLOTS")
                if int(primary[1]) == master_port
            )
            client.execute_command("CLUSTER FAILOVER")
        finally:
            client.close()
        deadline = time.monotonic() + timeout
        while True:
            views = [self._owner_port(node, slot) for node in self.nodes if node.running]
            if views and all(port == replica.port for port in views):
                return
            if time.monotonic() > deadline:
                raise RedisServerError(f"failover to {replica.address} not done in {timeout}s")
            time.sleep(0.05)

    @staticmethod
    def _owner_port(node: RedisServer, slot: int) -> int | None:
        """The port of `slot`'s master in `node`'s view (None: unknown or unreachable)."""
        client = node.client(socket_timeout=2)
        try:
            for start, end, primary, *_ in client.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    return int(primary[1])
        except (redis.RedisError, OSError):
            pass
        finally:
            client.close()
        return None

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        self.nodes = []

    def __enter__(self) -> RedisClusterNodes:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def redis_server(port: int | None = None, *, args: Sequence[str] = ()) -> Iterator[RedisServer]:
    """A started standalone server; killed and its dir removed afterwards."""
    with RedisServer(port, args=args) as server:
        yield server


@contextlib.contextmanager
def redis_cluster(masters: int = 3, *, replicas: int = 0) -> Iterator[str]:
    """The `redis+cluster://` URL of a started cluster whose state is ok on every node; every
    node is killed and its dir removed afterwards. Use `RedisClusterNodes` to reach the nodes."""
    with RedisClusterNodes(masters, replicas=replicas) as cluster:
        yield cluster.url
