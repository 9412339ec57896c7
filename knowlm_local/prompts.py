"""Prompt templates, in one place: Alpaca (ZhiXi, KnowLM-IE), OneKE, ChatML, raw text, and a GGUF's own.

Every template turns a list of chat messages into one prompt string. KnowLM
itself is single-turn; multi-turn Alpaca and OneKE follow the obvious
extension of each format (previous answers appended under their response
marker), so the newest turn is always rendered exactly as the model was
trained to see a single turn. The single-turn strings are tested
character-for-character against the published formats.
"""

from __future__ import annotations

from dataclasses import dataclass

from knowlm_local.errors import KnowLMError

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}

# KnowLM's templates/alpaca.json (the alpaca-lora template).
ALPACA_PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
ALPACA_PREAMBLE_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
# OneKE's model card: a llama-2 [INST] wrapper with this system prompt.
ONEKE_SYSTEM = "You are a helpful assistant. 你是一个乐于助人的助手。"

TEMPLATE_NAMES = ("alpaca", "oneke", "chatml", "raw", "gguf")


def alpaca_prompt(instruction: str, input_text: str = "") -> str:
    """The exact single-turn KnowLM/Alpaca prompt, with or without an input field."""
    if input_text:
        return (
            f"{ALPACA_PREAMBLE_INPUT}\n\n### Instruction:\n{instruction}\n\n"
            f"### Input:\n{input_text}\n\n### Response:\n"
        )
    return f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{instruction}\n\n### Response:\n"


def oneke_prompt(user: str, system: str = ONEKE_SYSTEM) -> str:
    """The exact single-turn OneKE prompt around ``user`` (for IE, a JSON instruction string)."""
    return f"[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user}[/INST]"


def _split_system(messages: list[Message]) -> tuple[str | None, list[Message]]:
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], messages[1:]
    return None, messages


def _check_alternation(turns: list[Message]) -> None:
    for i, msg in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if msg["role"] != expected:
            raise KnowLMError(
                f"message {i} has role {msg['role']!r}, expected {expected!r}",
                "messages must alternate user/assistant after an optional system message",
            )


@dataclass(frozen=True)
class Template:
    """Base: ``render`` the conversation so the model answers the last user message."""

    name: str
    stop: tuple[str, ...] = ()

    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class AlpacaTemplate(Template):
    name: str = "alpaca"
    stop: tuple[str, ...] = ("### Instruction:",)

    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        system, turns = _split_system(messages)
        _check_alternation(turns)
        if len(turns) == 1 and system is None:
            return alpaca_prompt(turns[0]["content"])
        out = [system if system is not None else ALPACA_PREAMBLE]
        for msg in turns:
            if msg["role"] == "user":
                out.append(f"\n\n### Instruction:\n{msg['content']}\n\n### Response:\n")
            else:
                out.append(msg["content"])
        return "".join(out)


@dataclass(frozen=True)
class OneKETemplate(Template):
    name: str = "oneke"
    stop: tuple[str, ...] = ("[INST]",)

    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        system, turns = _split_system(messages)
        _check_alternation(turns)
        out = []
        for i, msg in enumerate(turns):
            if msg["role"] == "user":
                out.append(oneke_prompt(msg["content"], system or ONEKE_SYSTEM) if i == 0
                           else f"<s>[INST] {msg['content']}[/INST]")
            else:
                out.append(f" {msg['content']} </s>")
        return "".join(out)


@dataclass(frozen=True)
class RawTemplate(Template):
    """No template: base models (KnowLM-13B-Base) continue the text as typed, as KnowLM's own script does."""

    name: str = "raw"

    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        system, turns = _split_system(messages)
        _check_alternation(turns)
        text = "".join(m["content"] if m["role"] == "assistant" else ("\n" if i else "") + m["content"]
                       for i, m in enumerate(turns))
        return f"{system}\n{text}" if system else text


@dataclass(frozen=True)
class JinjaTemplate(Template):
    """A Hugging Face style Jinja chat template (as stored in a GGUF's ``tokenizer.chat_template``)."""

    name: str = "gguf"
    source: str = ""
    bos_token: str = ""
    eos_token: str = ""
    strip_bos: bool = True  # the tokenizer adds BOS itself, so a BOS in the text would appear twice

    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        from datetime import datetime

        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            text = env.from_string(self.source).render(
                messages=messages, add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token, eos_token=self.eos_token,
            )
        except TemplateError as exc:
            raise KnowLMError(f"the model's chat template failed: {exc}",
                              "pass --template alpaca, oneke or chatml") from exc
        if self.strip_bos and self.bos_token and text.startswith(self.bos_token):
            text = text[len(self.bos_token):]
        return text


CHATML_SOURCE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def get_template(name: str, chat_template: str | None = None, bos_token: str = "", eos_token: str = "",
                 adds_bos: bool = True) -> Template:
    """A template by name; ``gguf`` uses ``chat_template`` (the model's own Jinja template)."""
    if name == "alpaca":
        return AlpacaTemplate()
    if name == "oneke":
        return OneKETemplate()
    if name == "raw":
        return RawTemplate()
    if name == "chatml":
        return JinjaTemplate(name="chatml", source=CHATML_SOURCE, stop=("<|im_end|>",))
    if name == "gguf":
        if not chat_template:
            raise KnowLMError("this model has no chat template in its GGUF",
                              "pass --template alpaca (KnowLM/ZhiXi), oneke, chatml or raw")
        stop = (eos_token,) if eos_token else ()
        return JinjaTemplate(source=chat_template, bos_token=bos_token, eos_token=eos_token, stop=stop,
                             strip_bos=adds_bos)
    raise KnowLMError(f"unknown template {name!r}", f"choose one of: {', '.join(TEMPLATE_NAMES)}")
