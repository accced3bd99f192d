"""hola-ros soak --llamacpp puts llama.cpp beside the graph holding the same models: which ones."""
from hola_ros.cli.soak import _served_models


def test_the_models_a_graph_serves_come_from_its_parameter_files(tmp_path):
    assert _served_models([]) == ("qwen2.5-coder-0.5b-instruct", "")
    assert _served_models(["config/quality.yaml"])[1] == "qwen2.5-coder-0.5b-instruct"
    extra = tmp_path / "p.yaml"
    extra.write_text("/**/hola_verifier:\n  ros__parameters:\n    model: smollm2-135m-instruct\n")
    assert _served_models(["config/quality.yaml", str(extra)])[0] == "smollm2-135m-instruct"  # later files win
