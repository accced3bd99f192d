"""A split deployment on one machine: two network namespaces, "robot" (drafter, retriever, the
client) and "edge" (the verifier), joined by one link with delay and loss, with plain DDS
discovery between them (multicast on that link, UDP only).

Addresses come from the documentation range 192.0.2.0/24 and exist only inside the namespaces
made here, so nothing else is ever addressed. The link is a veth pair shaped by `tc netem` where
the kernel has sch_netem, else two TAP devices joined by hola_ros.netwire (the same delay and
loss, in userspace). close() removes everything; use it as a context manager.
"""
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

ROBOT_ADDR, EDGE_ADDR, PREFIX_LEN = "192.0.2.1", "192.0.2.2", 24
COMMAND_TIMEOUT_S = 15
WIRE_START_TIMEOUT_S = 10
# DDS between the namespaces: discovery by multicast on the link (not localhost-only), and UDP
# only (Fast DDS would otherwise pass data through shared memory, past the link)
DDS_ENV = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET", "FASTDDS_BUILTIN_TRANSPORTS": "UDPv4"}


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no iproute2, no TAP device)."""


@dataclass(frozen=True)
class LinkShape:
    delay_ms: float = 5.0    # one way, each direction
    loss_pct: float = 1.0    # each direction

    def __str__(self) -> str:
        return f"{self.delay_ms:g} ms, {self.loss_pct:g} % loss each way"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


class SplitNetwork:
    def __init__(self, shape: LinkShape = LinkShape(), tag: str | None = None):
        tag = tag or str(os.getpid())
        self.shape = shape
        self.robot, self.edge = f"hola-robot-{tag}", f"hola-edge-{tag}"
        self.devices = {self.robot: f"hr{tag}"[:15], self.edge: f"he{tag}"[:15]}
        self.kind = ""            # "netem" or "netwire" once up
        self._made: list[str] = []
        self._wire: subprocess.Popen | None = None

    def __enter__(self) -> "SplitNetwork":
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def prefix(self, namespace: str) -> tuple[str, ...]:
        """Command prefix that runs a program inside `namespace` (self.robot or self.edge)."""
        return ("ip", "netns", "exec", namespace)

    def _create(self) -> None:
        for namespace in (self.robot, self.edge):
            result = _ip("netns", "add", namespace, check=False)
            if result.returncode != 0:
                raise NetnsUnavailable(f"`ip netns add` is not permitted here: {result.stderr.strip()}")
            self._made.append(namespace)
        if not self._veth_with_netem():
            self._tap_pair_with_netwire()
        for namespace, address in ((self.robot, ROBOT_ADDR), (self.edge, EDGE_ADDR)):
            device = self.devices[namespace]
            _ip("-n", namespace, "addr", "add", f"{address}/{PREFIX_LEN}", "dev", device)
            _ip("-n", namespace, "link", "set", device, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
            # DDS discovery multicast leaves through the link (the namespace has no other route)
            _ip("-n", namespace, "route", "add", "224.0.0.0/4", "dev", device)

    def _veth_with_netem(self) -> bool:
        robot_dev, edge_dev = self.devices[self.robot], self.devices[self.edge]
        _ip("link", "add", robot_dev, "netns", self.robot, "type", "veth", "peer", "name", edge_dev, "netns", self.edge)
        if all(self._netem(namespace, "add", self.shape.loss_pct) for namespace in (self.robot, self.edge)):
            self.kind = "netem"
            return True
        _ip("-n", self.robot, "link", "del", robot_dev)  # takes its peer along
        return False

    def _netem(self, namespace: str, verb: str, loss_pct: float) -> bool:
        result = subprocess.run(["ip", "netns", "exec", namespace, "tc", "qdisc", verb, "dev", self.devices[namespace],
                                 "root", "netem", "delay", f"{self.shape.delay_ms}ms", "loss", f"{loss_pct}%"],
                                capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        return result.returncode == 0

    def _tap_pair_with_netwire(self) -> None:
        if not os.path.exists("/dev/net/tun"):
            raise NetnsUnavailable("the kernel has no sch_netem and there is no /dev/net/tun for the userspace link")
        robot_dev, edge_dev = self.devices[self.robot], self.devices[self.edge]
        self._wire = subprocess.Popen([sys.executable, "-m", "hola_ros.netwire", robot_dev, edge_dev,
                                       "--delay-ms", str(self.shape.delay_ms), "--loss-pct", str(self.shape.loss_pct)],
                                      stdout=subprocess.PIPE, text=True)
        if _read_line(self._wire.stdout, WIRE_START_TIMEOUT_S) != "ready":
            raise RuntimeError(f"hola_ros.netwire did not start (exit code {self._wire.poll()})")
        _ip("link", "set", robot_dev, "netns", self.robot)
        _ip("link", "set", edge_dev, "netns", self.edge)
        self.kind = "netwire"

    def cut(self) -> None:
        """Drop every frame both ways (interfaces and routes stay up, like a lost radio link)."""
        self._set_cut(True)

    def restore(self) -> None:
        self._set_cut(False)

    def _set_cut(self, cut: bool) -> None:
        if self.kind == "netwire":
            self._wire.send_signal(signal.SIGUSR1 if cut else signal.SIGUSR2)
            return
        for namespace in (self.robot, self.edge):
            if not self._netem(namespace, "change", 100.0 if cut else self.shape.loss_pct):
                raise RuntimeError(f"tc netem change failed in {namespace}")

    def counters(self) -> dict:
        """Packets and bytes through the robot's end of the link: proof the traffic crossed it."""
        out = _ip("-n", self.robot, "-s", "-j", "link", "show", "dev", self.devices[self.robot]).stdout
        stats = json.loads(out)[0]["stats64"]
        return {f"{way}_{unit}": stats[way][unit] for way in ("rx", "tx") for unit in ("packets", "bytes")}

    def close(self) -> None:
        """Remove the namespaces (their devices go with them) and stop the userspace link.
        Processes started inside must be stopped first (a namespace lives on while one runs)."""
        for namespace in reversed(self._made):
            _ip("netns", "del", namespace, check=False)
        self._made.clear()
        if self._wire is not None and self._wire.poll() is None:
            self._wire.terminate()
            try:
                self._wire.wait(COMMAND_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._wire.kill()
                self._wire.wait()


def _read_line(stream, timeout_s: float) -> str:
    return stream.readline().strip() if has_output(stream, timeout_s) else ""


def has_output(stream, timeout_s: float) -> bool:
    """True once `stream` has something to read, False after the timeout."""
    import select

    ready, _, _ = select.select([stream], [], [], timeout_s)
    return bool(ready)


def lossy_link_profile():
    """The packaged Fast DDS profile for a lossy link (config/fastdds_lossy_link.xml)."""
    from hola_ros.graph import config_dir

    return config_dir() / "fastdds_lossy_link.xml"


class SplitGraph:
    """The node graph across a SplitNetwork: `robot_nodes` in the robot namespace, `edge_nodes`
    in the edge one (none: the whole graph on the robot, the one-host baseline). Clients run on
    the robot side: `self.robot.cli("ask", ...)`. `dds_profile`: a Fast DDS XML profile for every
    process (e.g. lossy_link_profile()); None: Fast DDS's defaults."""

    def __init__(self, net: SplitNetwork, work_dir, params: str, robot_nodes: list[str], edge_nodes: list[str],
                 domain_id: int, dds_profile=None):
        from pathlib import Path

        from hola_ros.local_graph import LocalGraph

        env = {**DDS_ENV, **({"FASTDDS_DEFAULT_PROFILES_FILE": str(dds_profile)} if dds_profile else {})}
        self.robot = LocalGraph(Path(work_dir) / "robot", params, domain_id, only=",".join(robot_nodes),
                                prefix=net.prefix(net.robot), env=env)
        self.graphs = [self.robot]
        if edge_nodes:
            self.graphs.append(LocalGraph(Path(work_dir) / "edge", params, domain_id, only=",".join(edge_nodes),
                                          prefix=net.prefix(net.edge), env=env))

    def wait_active(self, timeout_s: float = 600) -> None:
        for graph in self.graphs:
            graph.wait_active(timeout_s)

    def node_pids(self) -> dict[str, int]:
        return {name: pid for graph in self.graphs for name, pid in graph.node_pids().items()}

    def ask_json(self, text: str, *options: str, timeout_s: float = 300) -> dict:
        """`hola-ros ask --json` from the robot side; a failure to run is an answer with the error."""
        run = self.robot.cli("ask", text, "--json", "--timeout", str(timeout_s), *options, timeout=timeout_s + 60)
        try:
            return json.loads(run.stdout)
        except json.JSONDecodeError:
            return {"success": False, "error": f"hola-ros ask exited {run.returncode}: {run.stderr.strip()[-500:]}"}

    def stop(self) -> None:
        for graph in self.graphs:
            graph.stop()


LONG_PROMPT = "Write a very long story about a warehouse robot."


def link_cut_trial(net: SplitNetwork, graph: SplitGraph, liveness_s: float = 3.0, timeout_s: float = 120.0,
                   hold_s: float = 0.0) -> dict:
    """Cut the link while an answer streams to the robot's client, keep it down until that client
    has given up (and at least `hold_s` in all), restore it, and ask again: what the client saw,
    and whether the same node processes serve again."""
    from hola_ros.local_graph import SOURCE_ROOT

    pids = graph.node_pids()
    ask = subprocess.Popen(graph.robot.cli_command("ask", LONG_PROMPT, "--max-new-tokens", "96", "--retrieval", "off",
                                                   "--mode", "ar", "--liveness", str(liveness_s),
                                                   "--timeout", str(timeout_s)),
                           env=graph.robot.env, cwd=SOURCE_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    streaming = has_output(ask.stdout, timeout_s)
    net.cut()
    cut_at = time.monotonic()
    try:
        _, err = ask.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        ask.kill()
        _, err = ask.communicate()
    gave_up_after_s = time.monotonic() - cut_at
    time.sleep(max(0.0, hold_s - gave_up_after_s))
    net.restore()
    restored_at = time.monotonic()
    again = graph.ask_json("Say hello to the operator.", "--max-new-tokens", "8", "--retrieval", "off",
                           timeout_s=timeout_s)
    return {"streaming_before_cut": streaming, "down_s": restored_at - cut_at, "client_exit_code": ask.returncode,
            "client_error": (err.strip().splitlines() or [""])[-1], "client_gave_up_after_s": gave_up_after_s,
            "served_again": bool(again.get("success")), "served_again_after_s": time.monotonic() - restored_at,
            "again": again, "same_processes": graph.node_pids() == pids}
