"""Decoding parameters: one frozen dataclass filled by the CLI, `/set` and the HTTP API alike.

Defaults come from the model card (the publisher's recommendation), then the
user's flags override them. ``/set NAME VALUE`` in chat goes through
:meth:`GenerationParams.with_value`, so every field is settable at run time
with the same validation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from knowlm_local.errors import KnowLMError
from knowlm_local.zoo import ModelCard


@dataclass(frozen=True)
class GenerationParams:
    """How to sample one answer. ``temperature == 0`` means greedy."""

    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 40
    min_p: float = 0.0
    repeat_penalty: float = 1.1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    max_tokens: int = 512
    seed: int = -1
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        checks = [
            (self.temperature >= 0, "temperature must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.top_k >= 0, "top_k must be >= 0 (0 disables it)"),
            (0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (self.repeat_penalty > 0, "repeat_penalty must be > 0"),
            (self.max_tokens > 0, "max_tokens must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise KnowLMError(f"invalid generation parameter: {message}", "see `/help` or `--help` for ranges")

    @classmethod
    def from_card(cls, card: ModelCard | None, **overrides: Any) -> GenerationParams:
        """The card's recommended decoding, with non-None ``overrides`` on top."""
        base = cls()
        if card is not None:
            d = card.decoding
            base = replace(
                base,
                temperature=d.temperature,
                top_p=d.top_p,
                top_k=d.top_k,
                repeat_penalty=d.repeat_penalty,
                max_tokens=d.max_tokens,
            )
        given = {k: v for k, v in overrides.items() if v is not None}
        if "stop" in given:
            given["stop"] = tuple(given["stop"])
        return replace(base, **given)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def with_value(self, name: str, text: str) -> GenerationParams:
        """Parse ``text`` for field ``name`` (as typed after ``/set``) and return an updated copy."""
        types = {f.name: f.type for f in fields(self)}
        key = name.replace("-", "_")
        if key not in types:
            raise KnowLMError(
                f"unknown parameter {name!r}", f"settable: {', '.join(self.field_names())}"
            )
        kind = str(types[key])
        try:
            if kind == "float":
                value: Any = float(text)
            elif kind == "int":
                value = int(text)
            else:  # stop: comma-separated, escapes like \n allowed; "none" clears
                value = () if text.strip().lower() in ("", "none") else tuple(
                    s.encode("utf-8").decode("unicode_escape") for s in text.split(",")
                )
        except ValueError:
            raise KnowLMError(f"{key} needs a {kind}, got {text!r}", f"example: /set {key} 0.2") from None
        return replace(self, **{key: value})

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d
