import math
import sys
import types

from hola_ros import resources


def test_process_figures_are_real():
    figures = resources.ResourceSampler().sample()
    assert figures["rss_bytes"] > 10 * 2**20 and 0 <= figures["system_memory_percent"] <= 100
    assert figures["cpu_percent"] >= 0


def test_nvml_figures_when_a_gpu_answers(monkeypatch):
    """A stand-in pynvml shaped like nvidia-ml-py: its figures reach the sample."""
    fake = types.SimpleNamespace(
        NVML_TEMPERATURE_GPU=0, nvmlInit=lambda: None, nvmlDeviceGetHandleByIndex=lambda i: "gpu0",
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=37),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=123 * 2**20),
        nvmlDeviceGetTemperature=lambda h, kind: 61)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setitem(sys.modules, "jtop", None)  # not a Jetson
    figures = resources.ResourceSampler().sample()
    assert figures["gpu_source"] == "nvml" and figures["gpu_utilization_percent"] == 37.0
    assert figures["gpu_memory_used_bytes"] == 123 * 2**20 and figures["gpu_temperature_c"] == 61.0


def test_gpu_library_that_fails_to_start_reports_no_gpu(monkeypatch):
    def broken_init():
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(nvmlInit=broken_init))
    monkeypatch.setitem(sys.modules, "jtop", None)
    figures = resources.ResourceSampler().sample()
    assert figures["gpu_source"] == "none" and figures["gpu_utilization_percent"] == -1.0
    assert math.isnan(figures["gpu_temperature_c"])
