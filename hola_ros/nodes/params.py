"""Node parameters as ROS declares them: a descriptor with a description, the range rclpy itself
enforces, the allowed choices, and when a new value takes effect."""
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

LIVE = "live"               # read where it is used: a change applies to the next request
ACTIVATION = "activation"   # read when the node activates (models, threads, workers): refused while active
START = "start"             # read once at process start: read_only

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Param:
    default: Any
    description: str
    range: tuple[float, float] | None = None   # inclusive bounds
    choices: tuple[str, ...] | None = None
    applies: str = LIVE

    def descriptor(self, name: str) -> ParameterDescriptor:
        constraints = []
        if self.choices:
            constraints.append(f"one of {', '.join(self.choices)}")
        if self.applies == ACTIVATION:
            constraints.append("applies at activation: deactivate the node, set it, activate")
        descriptor = ParameterDescriptor(name=name, description=self.description, read_only=self.applies == START,
                                         additional_constraints="; ".join(constraints))
        if self.range is not None and isinstance(self.default, bool):
            raise TypeError(f"{name}: a boolean parameter has no range")
        if self.range is not None and isinstance(self.default, int):
            descriptor.integer_range = [IntegerRange(from_value=int(self.range[0]), to_value=int(self.range[1]), step=1)]
        elif self.range is not None:
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(self.range[0]),
                                                                  to_value=float(self.range[1]), step=0.0)]
        return descriptor

    def refusal(self, name: str, value, current, node_active: bool) -> str | None:
        """Why `value` may not be set now (ranges and types are rclpy's job), or None."""
        if self.choices and value not in self.choices:
            return f"{name}={value!r}: must be one of {', '.join(self.choices)}"
        if self.applies == ACTIVATION and node_active and value != current:
            return (f"{name} applies when the node activates and the node is active: deactivate it, "
                    "set the parameter, then activate it")
        return None
