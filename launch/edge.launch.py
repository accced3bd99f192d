"""ros2 launch hola_ros edge.launch.py [namespace:=robot1] [params_file:=my.yaml] [graph:=graph.yaml]
                                       [log_level:=info] [nodes:=hola_verifier] [ready_timeout:=600]

Starts the graph described in config/graph.yaml (the same file `hola-ros up` reads, with the same
options) as lifecycle nodes that activate themselves (parameter autostart) and respawn when they die.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

from hola_ros.graph import LOG_LEVELS, launch_options, load_graph, readiness_command

ARGUMENTS = {
    "namespace": ("", "ROS namespace of the whole graph: robot1 serves /robot1/hola/ask"),
    "params_file": ("", "extra ROS 2 parameters file, applied after the graph's own"),
    "graph": ("", "graph YAML (default: the package's config/graph.yaml)"),
    "log_level": ("info", f"one of {', '.join(LOG_LEVELS)}"),
    "nodes": ("", "comma-separated node names to start (default: every node of the graph)"),
    "ready_timeout": ("600", "seconds to watch for every node to report ready (hola-ros status --wait prints their "
                             "states and 'graph ready'); 0: do not watch"),
}


def _nodes(context):
    arg = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    graph = load_graph(arg["graph"] or None)
    options = launch_options(graph, arg["namespace"], [arg["params_file"]], arg["log_level"], arg["nodes"])
    nodes = [LifecycleNode(package="hola_ros", executable=node.executable, name=node.name,
                           namespace=options.namespace,
                           parameters=[str(graph.parameters), *map(str, options.params_files)],
                           ros_arguments=["--log-level", options.log_level], respawn=node.respawn,
                           respawn_delay=node.respawn_delay, output="screen")
             for node in options.nodes]
    ready_timeout = float(arg["ready_timeout"])
    if ready_timeout <= 0:
        return nodes
    # ends, printing the nodes' states and "graph ready", once every node reports ready
    return nodes + [ExecuteProcess(cmd=readiness_command(graph, options, ready_timeout), name="hola_ready",
                                   output="screen")]


def generate_launch_description():
    return LaunchDescription([
        *(DeclareLaunchArgument(name, default_value=default, description=description)
          for name, (default, description) in ARGUMENTS.items()),
        OpaqueFunction(function=_nodes),
    ])
