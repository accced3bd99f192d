"""A network link in userspace, for kernels without sch_netem: two TAP devices whose Ethernet
frames are relayed with a fixed one-way delay and independent random loss, as `tc qdisc add dev X
root netem delay D loss P` on both ends of a veth pair would do.

    python -m hola_ros.netwire TAP_A TAP_B --delay-ms 5 --loss-pct 1 --max-s 3600

It creates both TAP devices, prints "ready" (the caller then moves each into its network
namespace) and relays until SIGTERM / SIGINT or --max-s. SIGUSR1 cuts the link (every frame
dropped), SIGUSR2 restores it.
"""
import argparse
import fcntl
import heapq
import os
import random
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
MAX_FRAME = 65536
IDLE_WAIT_S = 0.5


def open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


class Wire:
    def __init__(self, fd_a: int, fd_b: int, delay_s: float, loss: float, seed: int | None = None):
        self.peer = {fd_a: fd_b, fd_b: fd_a}
        self.delay_s, self.loss = delay_s, loss
        self.cut = False
        self.running = True
        self.relayed = self.dropped = 0
        self._random = random.Random(seed)
        self._due: list[tuple[float, int, int, bytes]] = []  # (time, order, out fd, frame)
        self._order = 0

    def receive(self, fd: int, now: float) -> None:
        try:
            frame = os.read(fd, MAX_FRAME)
        except BlockingIOError:
            return
        except OSError:  # the device went away (namespace deleted): nothing more to relay
            self.running = False
            return
        if self.cut or self._random.random() < self.loss:
            self.dropped += 1
            return
        heapq.heappush(self._due, (now + self.delay_s, self._order, self.peer[fd], frame))
        self._order += 1

    def deliver(self, now: float) -> None:
        while self._due and self._due[0][0] <= now:
            _, _, out, frame = heapq.heappop(self._due)
            try:
                os.write(out, frame)
                self.relayed += 1
            except OSError:  # the receiving device is down: the frame is lost, like on a wire
                self.dropped += 1

    def wait_s(self, now: float) -> float:
        return min(IDLE_WAIT_S, max(0.0, self._due[0][0] - now)) if self._due else IDLE_WAIT_S

    def run(self, max_s: float) -> None:
        end = time.monotonic() + max_s
        while self.running and time.monotonic() < end:
            readable, _, _ = select.select(list(self.peer), [], [], self.wait_s(time.monotonic()))
            now = time.monotonic()
            for fd in readable:
                self.receive(fd, now)
            self.deliver(now)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hola_ros.netwire", description=__doc__.split("\n\n")[0])
    parser.add_argument("tap_a")
    parser.add_argument("tap_b")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay, each direction")
    parser.add_argument("--loss-pct", type=float, default=0.0, help="frames dropped, each direction")
    parser.add_argument("--max-s", type=float, default=3600.0, help="stop after this long at the latest")
    args = parser.parse_args(argv)
    if args.delay_ms < 0 or not 0 <= args.loss_pct <= 100 or args.max_s <= 0:
        parser.error("need --delay-ms >= 0, --loss-pct in [0, 100], --max-s > 0")
    wire = Wire(open_tap(args.tap_a), open_tap(args.tap_b), args.delay_ms / 1000.0, args.loss_pct / 100.0)

    def stop(_signum, _frame):
        wire.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGUSR1, lambda *_: setattr(wire, "cut", True))
    signal.signal(signal.SIGUSR2, lambda *_: setattr(wire, "cut", False))
    print("ready", flush=True)
    wire.run(args.max_s)
    print(f"relayed {wire.relayed} frames, dropped {wire.dropped}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
