"""What every hola_ros node shares: lifecycle with autostart, telemetry, declared parameters."""
import math
import socket
import sys
import time
import uuid

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import TransitionCallbackReturn
from std_msgs.msg import Header

from hola_ros.core.memory import trim_heap
from hola_ros.interfaces import DIAGNOSTICS, TELEMETRY, TELEMETRY_QOS
from hola_ros.msg import Telemetry
from hola_ros.nodes.params import START, Param
from hola_ros.resources import ResourceSampler

SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE
# service handlers never block an executor thread (the gateway awaits its jobs), so a few serve
# lifecycle, parameter, service and client traffic at once
EXECUTOR_THREADS = 4

COMMON_PARAMS = {
    "autostart": Param(True, "configure and activate the node when its process starts", applies=START),
    "telemetry_rate_hz": Param(1.0, "rate of hola/telemetry and /diagnostics", range=(0.01, 100.0)),
}


class HolaNode(LifecycleNode):
    """Subclasses declare their parameters and implement activate_resources /
    deactivate_resources (load / free models, create / destroy their services) and
    telemetry_figures."""

    def __init__(self, name: str, role: str, params: dict[str, Param], **node_options):
        super().__init__(name, **node_options)
        self.role, self.instance_id = role, uuid.uuid4().hex
        self.state_label = "unconfigured"
        self._params = {**COMMON_PARAMS, **params}
        # registered first, so values from parameter files are checked at declaration like later sets
        self.add_on_set_parameters_callback(self._check_parameters)
        for key, spec in self._params.items():
            self.declare_parameter(key, spec.default, spec.descriptor(key))
        self._sampler = ResourceSampler()
        self._hostname = socket.gethostname()
        self._telemetry_pub = self.create_publisher(Telemetry, TELEMETRY, TELEMETRY_QOS)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS, 10)
        self._telemetry_timer = self.create_timer(1.0 / self.param("telemetry_rate_hz"), self._publish_telemetry)
        self.add_post_set_parameters_callback(self._parameters_set)

    def param(self, name: str):
        return self.get_parameter(name).value

    def _check_parameters(self, params) -> SetParametersResult:
        active = self.state_label == "active"
        for p in params:
            spec = self._params.get(p.name)
            current = self.param(p.name) if self.has_parameter(p.name) else None
            reason = spec and spec.refusal(p.name, p.value, current, active)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _parameters_set(self, params) -> None:
        names = {p.name for p in params}
        if "telemetry_rate_hz" in names:
            self._telemetry_timer.timer_period_ns = int(1e9 / self.param("telemetry_rate_hz"))
        self.parameters_changed(names)

    def parameters_changed(self, names: set[str]) -> None:
        """Apply live parameters that are not simply read where they are used."""

    # lifecycle: parameters were checked when set; activate loads, deactivate frees.
    def on_configure(self, state) -> TransitionCallbackReturn:
        self.state_label = "inactive"
        return SUCCESS

    def on_activate(self, state) -> TransitionCallbackReturn:
        started = time.monotonic()
        try:
            self.activate_resources()
        except Exception as exc:
            self.get_logger().error(f"activation failed: {type(exc).__name__}: {exc}")
            self.deactivate_resources()
            trim_heap()
            return FAILURE
        trim_heap()  # what loading parsed and freed goes back to the system, not into the node's RSS
        self.state_label = "active"
        self.get_logger().info(f"active ({time.monotonic() - started:.1f} s to load)")
        return super().on_activate(state)

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self.state_label = "inactive"
        self.deactivate_resources()
        trim_heap()
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self.state_label = "unconfigured"
        return SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        if self.state_label == "active":
            self.deactivate_resources()
        self.state_label = "finalized"
        return SUCCESS

    def activate_resources(self) -> None:
        raise NotImplementedError

    def deactivate_resources(self) -> None:
        raise NotImplementedError

    def telemetry_figures(self) -> dict:
        """Node-specific Telemetry fields (tokens_per_s, queue_depth, requests_served, ...)."""
        return {}

    def not_ready_reason(self) -> str:
        """Why the node does not serve what it is for yet ("" when ready). Active means its models
        and index are loaded (activation loads them); a node that needs another one says so."""
        return "" if self.state_label == "active" else f"state {self.state_label}"

    def _publish_telemetry(self) -> None:
        figures = {**self._sampler.sample(), **self.telemetry_figures()}
        why = self.not_ready_reason()
        msg = Telemetry(stamp=self.get_clock().now().to_msg(), node=self.get_name(), role=self.role,
                        instance_id=self.instance_id, state=self.state_label, ready=not why, not_ready_reason=why)
        for key, value in figures.items():
            if hasattr(msg, key):
                setattr(msg, key, type(getattr(msg, key))(value))
        self._telemetry_pub.publish(msg)
        level = DiagnosticStatus.OK if not why else DiagnosticStatus.WARN
        message = self.state_label if not why or why.startswith("state ") else f"{self.state_label}, not ready: {why}"
        figures["ready"] = not why
        # /diagnostics is shared by every robot of the domain: name the node with its namespace
        status = DiagnosticStatus(level=level, name=f"hola_ros: {self.get_fully_qualified_name().lstrip('/')}",
                                  hardware_id=self._hostname, message=message,
                                  values=[KeyValue(key=k, value=_fmt(v)) for k, v in sorted(figures.items())])
        self._diagnostics_pub.publish(DiagnosticArray(header=Header(stamp=msg.stamp), status=[status]))


def _fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def run_node(node_class) -> int:
    """Process entry point: build the node, configure + activate it when autostart is set, spin."""
    rclpy.init(args=sys.argv)
    try:
        node = node_class()
    except ParameterException as exc:  # a bad value in a parameters file: say which, do not crash
        rclpy.logging.get_logger(node_class.__name__).fatal(f"invalid parameter: {exc}")
        rclpy.try_shutdown()
        return 1
    executor = MultiThreadedExecutor(num_threads=EXECUTOR_THREADS)
    executor.add_node(node)
    try:
        if node.param("autostart"):
            if node.trigger_configure() != SUCCESS or node.trigger_activate() != SUCCESS:
                node.get_logger().fatal("autostart failed: exiting (a supervisor may respawn this node)")
                return 1
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node.state_label == "active":
            node.deactivate_resources()
        executor.shutdown(timeout_sec=5)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
