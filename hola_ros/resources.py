"""Process and accelerator figures for telemetry: psutil always, NVML or jtop where present."""
import math

import psutil


class _Nvml:
    source = "nvml"

    def __init__(self):
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)

    def sample(self) -> dict:
        nv, h = self._nvml, self._handle
        return {"gpu_utilization_percent": float(nv.nvmlDeviceGetUtilizationRates(h).gpu),
                "gpu_memory_used_bytes": int(nv.nvmlDeviceGetMemoryInfo(h).used),
                "gpu_temperature_c": float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))}


class _Jtop:
    source = "jtop"

    def __init__(self):
        from jtop import jtop  # jetson-stats, on a Jetson

        self._jetson = jtop()
        self._jetson.start()

    def sample(self) -> dict:
        stats = self._jetson.stats
        temps = [v for k, v in stats.items() if k.startswith("Temp") and isinstance(v, (int, float))]
        return {"gpu_utilization_percent": float(stats.get("GPU", -1.0)),
                "gpu_memory_used_bytes": int(self._jetson.memory.get("RAM", {}).get("shared", 0) * 1024),
                "gpu_temperature_c": float(max(temps)) if temps else math.nan}


def _open_gpu():
    for probe in (_Jtop, _Nvml):
        try:
            return probe()
        except Exception:  # library absent or no device: try the next source
            continue
    return None


class ResourceSampler:
    """Figures of this process (CPU % of one core, RSS) and of the first GPU if one is visible."""

    def __init__(self):
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # first call only sets the reference point
        self._gpu = _open_gpu()

    def sample(self) -> dict:
        with self._process.oneshot():
            figures = {"cpu_percent": float(self._process.cpu_percent(None)),
                       "rss_bytes": int(self._process.memory_info().rss),
                       "system_memory_percent": float(psutil.virtual_memory().percent),
                       "gpu_utilization_percent": -1.0, "gpu_memory_used_bytes": 0,
                       "gpu_temperature_c": math.nan, "gpu_source": "none"}
        if self._gpu is not None:
            try:
                figures.update(self._gpu.sample(), gpu_source=self._gpu.source)
            except Exception:  # a GPU that stops answering must not stop telemetry
                pass
        return figures
