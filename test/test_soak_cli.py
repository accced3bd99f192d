"""hola-ros soak --llamacpp puts llama.cpp beside the graph holding the same models: which ones."""
from hola_ros.cli.soak import PROMPTS, _chat_prompts, _served_models
from hola_ros.core.engines import load_tokenizer


def test_the_models_a_graph_serves_come_from_its_parameter_files(tmp_path):
    assert _served_models([]) == ("qwen2.5-coder-0.5b-instruct", "")
    assert _served_models(["config/quality.yaml"]) == ("qwen2.5-coder-1.5b-instruct@1000mb", "")
    extra_l1 = tmp_path / "l1.yaml"
    extra_l1.write_text("/**/hola_drafter:\n  ros__parameters:\n    l1_model: qwen2.5-coder-0.5b-instruct@400mb\n")
    assert _served_models(["config/quality.yaml", str(extra_l1)])[1] == "qwen2.5-coder-0.5b-instruct@400mb"
    extra = tmp_path / "p.yaml"
    extra.write_text("/**/hola_verifier:\n  ros__parameters:\n    model: smollm2-135m-instruct\n")
    assert _served_models(["config/quality.yaml", str(extra)])[0] == "smollm2-135m-instruct"  # later files win


def test_llama_cpp_gets_the_questions_in_the_verifiers_chat_template():
    prompts = _chat_prompts("qwen2.5-coder-0.5b-instruct")
    assert len(prompts) == len(PROMPTS)
    tokenizer = load_tokenizer("qwen2.5-coder-0.5b-instruct")
    for question, ids in zip(PROMPTS, prompts):
        text = tokenizer.decode(ids, skip_special_tokens=False)
        assert question in text and text.rstrip().endswith("assistant")  # the template, ready for the answer
