"""The model's tokenizer and chat template (transformers' fast tokenizer, loaded offline)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast


class ChatTemplateError(ValueError):
    pass


class Tokenizer:
    def __init__(self, model_dir: Path):
        self.hf: PreTrainedTokenizerBase
        if (Path(model_dir) / "tokenizer.json").is_file():
            # The fast tokenizer class directly: AutoTokenizer would first import the config
            # classes of every architecture transformers knows (seconds of start-up time).
            self.hf = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
        else:
            self.hf = AutoTokenizer.from_pretrained(str(model_dir))
        self.vocab_size = len(self.hf)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.hf.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(token_ids, skip_special_tokens=skip_special_tokens)

    @cached_property
    def max_token_chars(self) -> int:
        """The most characters one token stands for (at least 1): a text of n characters
        has at least n / max_token_chars tokens, known without tokenizing it. The length of
        a vocabulary entry bounds its text: byte-level entries spell each byte as one
        character, and a decoded character is at least one byte."""
        return max(1, *(len(entry) for entry in self.hf.get_vocab()))

    def token_str(self, token_id: int) -> str:
        """The text of one token as it appears in output (for logprobs)."""
        return self.hf.decode([token_id], skip_special_tokens=False)

    @property
    def supports_tools(self) -> bool:
        """Whether the chat template renders `tools` (and tool calls) itself."""
        template = self.hf.chat_template
        return isinstance(template, str) and "tools" in template

    def chat_text(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The chat-formatted conversation as text (special tokens written out)."""
        if not self.hf.chat_template:
            raise ChatTemplateError("this model has no chat template; use /v1/completions")
        try:
            return self.hf.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=False
            )
        except Exception as exc:  # a template's own raise_exception (e.g. role order)
            raise ChatTemplateError(f"the chat template rejected the messages: {exc}") from exc

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[int]:
        if not self.hf.chat_template:
            raise ChatTemplateError("this model has no chat template; use /v1/completions")
        try:
            out = self.hf.apply_chat_template(
                messages,
                tools=tools,
                add_generation_prompt=add_generation_prompt,
                tokenize=True,
                return_dict=False,
            )
        except Exception as exc:  # a template's own raise_exception (e.g. role order)
            raise ChatTemplateError(f"the chat template rejected the messages: {exc}") from exc
        if isinstance(out, dict) or hasattr(out, "input_ids"):
            out = out["input_ids"]
        return list(out)
