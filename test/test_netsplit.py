"""The split-deployment link: the userspace relay's delay / loss / cut logic (no devices needed),
and network namespaces that are removed again, also when setting them up fails."""
import os
import socket
import subprocess

import pytest

from hola_ros import netsplit
from hola_ros.netsplit import LinkShape, NetnsUnavailable, SplitNetwork
from hola_ros.netwire import Wire


@pytest.fixture
def ends():
    """Two datagram socket pairs standing in for the TAP devices: (wire side, outside) each."""
    a_wire, a_out = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b_wire, b_out = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (a_wire, b_wire, b_out, a_out):
        s.setblocking(False)
    yield a_wire, a_out, b_wire, b_out
    for s in (a_wire, a_out, b_wire, b_out):
        s.close()


def test_frames_are_held_for_the_delay_then_delivered_in_order(ends):
    a_wire, a_out, b_wire, b_out = ends
    wire = Wire(a_wire.fileno(), b_wire.fileno(), delay_s=0.005, loss=0.0)
    for frame in (b"one", b"two"):
        a_out.send(frame)
        wire.receive(a_wire.fileno(), now=100.0)
    wire.deliver(now=100.004)
    with pytest.raises(BlockingIOError):
        b_out.recv(100)  # not yet due
    assert wire.wait_s(now=100.004) == pytest.approx(0.001)
    wire.deliver(now=100.005)
    assert [b_out.recv(100), b_out.recv(100)] == [b"one", b"two"] and wire.relayed == 2
    b_out.send(b"back")
    wire.receive(b_wire.fileno(), now=101.0)
    wire.deliver(now=101.01)
    assert a_out.recv(100) == b"back"


def drain(sock) -> list[bytes]:
    frames = []
    while True:
        try:
            frames.append(sock.recv(100))
        except BlockingIOError:
            return frames


def test_loss_drops_a_share_of_frames_and_a_cut_drops_all_until_restored(ends):
    a_wire, a_out, b_wire, b_out = ends
    wire = Wire(a_wire.fileno(), b_wire.fileno(), delay_s=0.0, loss=0.5, seed=1)
    for i in range(200):
        a_out.send(b"x")
        wire.receive(a_wire.fileno(), now=float(i))
    wire.deliver(now=1000.0)
    assert 60 < wire.dropped < 140 and len(drain(b_out)) == wire.relayed == 200 - wire.dropped
    wire.loss, wire.cut = 0.0, True
    dropped = wire.dropped
    for frame in (b"cut-1", b"cut-2"):
        a_out.send(frame)
        wire.receive(a_wire.fileno(), now=2000.0)
    wire.cut = False
    a_out.send(b"restored")
    wire.receive(a_wire.fileno(), now=2001.0)
    wire.deliver(now=2001.0)
    assert wire.dropped == dropped + 2 and drain(b_out) == [b"restored"]


def netns_names() -> set[str]:
    run = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return {line.split()[0] for line in run.stdout.splitlines() if line.strip()}


def test_namespaces_and_link_are_removed_on_close_and_on_failed_setup(monkeypatch):
    try:
        net = SplitNetwork(LinkShape(0.0, 0.0), tag=f"t{os.getpid()}")
        with net:
            assert {net.robot, net.edge} <= netns_names() and net.kind in ("netem", "netwire")
            assert net.counters()["tx_packets"] >= 0
    except NetnsUnavailable as exc:
        pytest.skip(str(exc))
    assert not {net.robot, net.edge} & netns_names()
    assert net._wire is None or net._wire.poll() is not None

    real_ip = netsplit._ip

    def failing_route(*args, **kwargs):
        if "route" in args:
            raise RuntimeError("simulated failure")
        return real_ip(*args, **kwargs)

    monkeypatch.setattr(netsplit, "_ip", failing_route)
    broken = SplitNetwork(LinkShape(0.0, 0.0), tag=f"u{os.getpid()}")
    with pytest.raises(RuntimeError, match="simulated"):
        broken.__enter__()
    assert not {broken.robot, broken.edge} & netns_names()
    assert broken._wire is None or broken._wire.poll() is not None


def test_the_lossy_link_profile_resends_within_the_draft_deadline():
    import xml.etree.ElementTree as ET

    from hola_ros.netsplit import lossy_link_profile
    from hola_ros.nodes.verifier import PARAMS

    ns = {"dds": "http://www.eprosima.com"}
    writer = ET.parse(lossy_link_profile()).getroot().find("dds:profiles/dds:data_writer", ns)
    assert writer.get("is_default_profile") == "true"
    period = writer.find("dds:times/dds:heartbeat_period", ns)
    seconds = int(period.find("dds:sec", ns).text) + int(period.find("dds:nanosec", ns).text) / 1e9
    assert 0 < seconds < PARAMS["draft_timeout_s"].default / 10
