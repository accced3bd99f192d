# Sourced by the scripts: a local-only ROS 2 setup for running the graph on this machine.
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-42}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
if [ -z "${ROS_LOG_DIR:-}" ]; then
  export ROS_LOG_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/hola_ros/ros_log"
  mkdir -p "$ROS_LOG_DIR"
fi
