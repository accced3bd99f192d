"""package.xml declares what the code imports: ROS packages by name, Python libraries by their
rosdep key where one exists; every other third-party import is in requirements.txt."""
import ast
import importlib.metadata
import os
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# rosdep keys of rosdistro's rosdep/python.yaml for the libraries the code imports
ROSDEP_KEYS = {"yaml": "python3-yaml", "psutil": "python3-psutil", "numpy": "python3-numpy", "tqdm": "python3-tqdm",
               "matplotlib": "python3-matplotlib", "transformers": "python3-transformers-pip",
               "onnxruntime": "python3-onnxruntime-pip", "jsonschema": "python3-jsonschema"}
NOT_ON_PIP_MACHINES = {"launch", "launch_ros"}        # ROS packages from a ROS install only
OPTIONAL = {"tensorrt", "jtop", "llama_cpp", "xgrammar"}  # imported only where present (guarded)


def imported_modules() -> set[str]:
    names = set()
    for path in [*(ROOT / "hola_ros").rglob("*.py"), *(ROOT / "launch").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"hola_ros", "__future__"}


def declared() -> set[str]:
    return {e.text.strip() for e in ET.parse(ROOT / "package.xml").getroot() if e.tag.endswith("depend")}


def is_ros_package(name: str) -> bool:
    prefixes = [sys.prefix, *os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)]
    return name in NOT_ON_PIP_MACHINES or any(
        (Path(p) / "share" / "ament_index" / "resource_index" / "packages" / name).exists() for p in prefixes if p)


def test_every_imported_ros_package_and_keyed_python_library_is_in_package_xml():
    imports, deps = imported_modules(), declared()
    ros = {m for m in imports if is_ros_package(m)}
    assert {"rclpy", "std_msgs", "rcl_interfaces", "diagnostic_msgs"} <= ros  # the scan sees them
    assert sorted(ros - deps) == []
    assert sorted(ROSDEP_KEYS[m] for m in imports & set(ROSDEP_KEYS) if ROSDEP_KEYS[m] not in deps) == []


def test_every_other_third_party_import_is_installed_by_requirements_or_setup():
    wanted = (ROOT / "requirements.txt").read_text().lower() + (ROOT / "scripts" / "setup").read_text().lower()
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for module in sorted(imported_modules() - OPTIONAL):
        if is_ros_package(module):
            continue
        names = distributions.get(module, [])
        if not any(re.search(rf"(^|[\s/]){re.escape(n.lower())}([\s=<>\[]|$)", wanted, re.M) for n in names):
            missing.append(f"{module} ({', '.join(names) or 'not installed'})")
    assert missing == []
