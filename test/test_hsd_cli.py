import json

import pytest

from hola_ros.cli import main


@pytest.mark.slow
def test_generate_json_contract_and_modes_agree(capsys):
    outs = {}
    for mode in ("ar", "hsd"):
        assert main(["generate", "--prompt", "Name three colours.", "--mode", mode, "--max-new-tokens", "12",
                     "--threads", "1", "--json"]) == 0
        outs[mode] = json.loads(capsys.readouterr().out)
    for out in outs.values():
        assert {"text", "token_ids", "stats", "stop_reason"} <= set(out)
        assert {"new_tokens", "tokens_per_s", "decode_s", "acceptance_rate"} <= set(out["stats"])
        assert out["stats"]["new_tokens"] == len(out["token_ids"]) <= 12 and out["text"]
    assert outs["ar"]["token_ids"] == outs["hsd"]["token_ids"]
    assert outs["hsd"]["stats"]["mode"] == "hsd"


@pytest.mark.slow
def test_generate_streams_text_without_json(capsys):
    assert main(["generate", "--prompt", "Say hello.", "--max-new-tokens", "6", "--threads", "1", "--raw"]) == 0
    cap = capsys.readouterr()
    assert cap.out.strip() and not cap.out.lstrip().startswith("{")
    assert "tok/s" in cap.err and "[hsd]" in cap.err
