"""Where the package's data files are (config/, data/kb/): the source checkout, else
share/hola_ros of the first install prefix that has them (AMENT_PREFIX_PATH, as ament_index
resolves packages, then this Python's prefix for a venv install)."""
import os
import sys
from pathlib import Path


def _bases() -> list[Path]:
    bases = [Path(__file__).resolve().parent.parent]
    bases += [Path(p) / "share" / "hola_ros" for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    bases.append(Path(sys.prefix) / "share" / "hola_ros")
    return bases


def package_file(relative: str) -> Path | None:
    """The first existing `relative` path (file or directory) under the bases, or None."""
    for base in _bases():
        if (base / relative).exists():
            return base / relative
    return None


def gsm8k_train() -> Path:
    """The GSM8K train split the benchmarks and calibration default to: $HOLA_ROS_GSM8K, else
    shared/data/gsm8k/train.jsonl in a folder above the source tree, the venv or the working
    directory (the dev machines keep `shared/` beside the checkout). The checkout-relative path
    when none exists, so the error names where it looked first."""
    if os.environ.get("HOLA_ROS_GSM8K"):
        return Path(os.environ["HOLA_ROS_GSM8K"])
    relative = Path("shared") / "data" / "gsm8k" / "train.jsonl"
    starts = [Path(__file__).resolve().parent.parent, Path(sys.prefix).resolve().parent, Path.cwd().resolve()]
    for start in starts:
        for folder in (start, *start.parents):
            if (folder / relative).is_file():
                return folder / relative
    return starts[0].parent / relative


def require_package_file(relative: str) -> Path:
    path = package_file(relative)
    if path is None:
        raise FileNotFoundError(f"hola_ros {relative} not found in the source tree or any install prefix "
                                f"(looked under {', '.join(map(str, _bases()))})")
    return path
