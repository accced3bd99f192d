"""A chat tokenizer without torch: the `tokenizers` library on tokenizer.json and the model's
own chat template rendered with jinja2 (as transformers renders it). transformers' tokenizer
classes import torch (~+280 MB RSS measured), which a serving node must not pay for."""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from hola_ros.core.memory import trim_heap


class TokenizerError(ValueError):
    """A tokenizer directory that cannot be used (the message says why)."""


def _token_text(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


class ChatTokenizer:
    """The subset of a Hugging Face tokenizer's API the engine uses: encode, decode,
    apply_chat_template, convert_tokens_to_ids, chat_template, eos_token_id."""

    def __init__(self, directory):
        from tokenizers import Tokenizer

        directory = Path(directory)
        if not (directory / "tokenizer.json").is_file():
            raise TokenizerError(f"{directory} has no tokenizer.json")
        self._tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
        trim_heap()  # the JSON parse leaves ~55 MB of freed heap behind (Qwen's 151k vocabulary)
        cfg_path = directory / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        template_file = directory / "chat_template.jinja"
        self.chat_template = template_file.read_text() if template_file.is_file() else cfg.get("chat_template")
        self.bos_token, self.eos_token = _token_text(cfg.get("bos_token")), _token_text(cfg.get("eos_token"))
        self.eos_token_id = self.convert_tokens_to_ids(self.eos_token) if self.eos_token else None
        self._template = None

    @property
    def backend_tokenizer(self):
        """The `tokenizers` object (as transformers' fast tokenizers name it)."""
        return self._tok

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False, add_generation_prompt: bool = True,
                            tools: list[dict] | None = None):
        if not self.chat_template:
            raise TokenizerError("this tokenizer has no chat template")
        text = self._compiled().render(messages=messages, add_generation_prompt=add_generation_prompt, tools=tools,
                                       bos_token=self.bos_token or "", eos_token=self.eos_token or "")
        return self.encode(text) if tokenize else text

    def _compiled(self):
        if self._template is None:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message):
                raise TokenizerError(f"chat template: {message}")

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=["jinja2.ext.loopcontrols"])
            env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, ensure_ascii=False, indent=indent)
            env.globals.update(raise_exception=raise_exception,
                               strftime_now=lambda fmt: datetime.now().strftime(fmt))
            self._template = env.from_string(self.chat_template)
        return self._template
