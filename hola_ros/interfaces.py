"""The graph's topic, service and action names, and the QoS of its topics and services.

Relative names: every node resolves them in its own namespace, so `hola-ros up --namespace
robot1` (or `ros2 launch ... namespace:=robot1`) puts a whole graph under /robot1/hola/... and
two robots share a ROS domain without colliding. Without a namespace they are /hola/ask etc.
/diagnostics stays absolute: diagnostic aggregators listen there fleet-wide, and each status
names its node by its fully qualified name.
"""
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.validate_namespace import validate_namespace

ASK = "hola/ask"
GENERATE = "hola/generate"
CANCEL = "hola/cancel"
RESPONSE = "hola/response"
TELEMETRY = "hola/telemetry"
DRAFT = "hola/draft"
RETRIEVE = "hola/retrieve"
DOCUMENTS = "hola/documents"
DIAGNOSTICS = "/diagnostics"

# Answers are reliable and deep: a streamed answer must arrive whole.
RESPONSE_QOS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
# A burst of callers must queue in DDS until the gateway takes each request (and answers "busy"
# when its queue is full): the default depth of 10 would drop requests silently.
REQUEST_QOS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
# Telemetry is periodic: a lost sample is replaced by the next one, so it is never resent (no
# retransmissions competing with answers on a lossy link). Subscribers must ask for best effort.
TELEMETRY_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)


def normalize_namespace(namespace: str | None) -> str:
    """'' / None -> '/', 'robot1' -> '/robot1'; raises ValueError with the rule it breaks."""
    from rclpy.exceptions import InvalidNamespaceException

    text = (namespace or "").strip()
    text = "/" + text.strip("/") if text.strip("/") else "/"
    try:
        validate_namespace(text)
    except InvalidNamespaceException as exc:
        raise ValueError(f"invalid namespace {namespace!r}: {str(exc).splitlines()[0]}") from None
    return text


def resolve(name: str, namespace: str | None) -> str:
    """The absolute name of a graph name under `namespace` (normalized first)."""
    base = normalize_namespace(namespace)
    return f"{base.rstrip('/')}/{name}"
