"""`colcon build` of a workspace with this repository under src/ builds the whole package."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_colcon_build_installs_interfaces_nodes_cli_launch_and_config(tmp_path):
    colcon = Path(sys.executable).parent / "colcon"
    if not colcon.exists():
        pytest.skip("colcon is not installed in this environment")
    src = tmp_path / "ws" / "src" / "hola_ros"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    prefix = str(Path(sys.prefix))
    env = dict(os.environ, AMENT_PREFIX_PATH=prefix, CMAKE_PREFIX_PATH=prefix,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    build = subprocess.run([str(colcon), "build", "--cmake-args", f"-DPython3_EXECUTABLE={sys.executable}",
                            "-DBUILD_TESTING=OFF"], cwd=tmp_path / "ws", env=env, capture_output=True, text=True,
                           timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    install = tmp_path / "ws" / "install" / "hola_ros"
    for rel in ("lib/hola_ros/verifier", "lib/hola_ros/drafter", "lib/hola_ros/retriever", "bin/hola-ros",
                "share/hola_ros/launch/edge.launch.py", "share/hola_ros/config/graph.yaml",
                "share/hola_ros/config/hola.yaml", "share/hola_ros/config/fastdds_lossy_link.xml",
                "share/hola_ros/package.xml"):
        assert (install / rel).is_file(), rel
    # the installed package resolves its interfaces, its sources and the installed graph config
    site = install / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    probe = ("from hola_ros.srv import Ask; from hola_ros.action import Generate; import hola_ros.nodes.verifier; "
             "from hola_ros.graph import load_graph; print(load_graph().path); "
             "from hola_ros.core.retrieval.ingest import demo_kb_dir; print(demo_kb_dir())")
    run = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                         env=dict(env, PYTHONPATH=str(site), AMENT_PREFIX_PATH=f"{install}{os.pathsep}{prefix}",
                                  LD_LIBRARY_PATH=f"{install / 'lib'}{os.pathsep}{os.environ.get('LD_LIBRARY_PATH', '')}"))
    assert run.returncode == 0, run.stderr[-3000:]
    share = install / "share" / "hola_ros"
    assert run.stdout.split() == [str(share / "config" / "graph.yaml"), str(share / "data" / "kb")]
