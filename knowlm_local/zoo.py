"""The model zoo: one TOML card per model in ``models/``, read into frozen dataclasses.

Cards are data, not code, so adding a model never touches Python. Unknown keys
are an error: a typo in a card must fail the test that loads every card rather
than silently fall back to a default.
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import MISSING, dataclass, field, fields
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from knowlm_local.errors import KnowLMError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

TEMPLATES = ("alpaca", "oneke", "chatml", "raw", "gguf")
FORMATS = ("hf", "gguf", "lora")


@dataclass(frozen=True)
class Decoding:
    """Recommended decoding for a model (the publisher's defaults where known)."""

    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 40
    repeat_penalty: float = 1.1
    max_tokens: int = 512
    num_beams: int = 1


@dataclass(frozen=True)
class ModelCard:
    """Everything knowlm-local needs to know about one model."""

    name: str
    display_name: str
    family: str
    description: str
    hf_repo: str
    revision: str
    architecture: str
    parameters: str
    license: str
    template: str
    context_length: int
    format: str = "hf"
    modelscope_repo: str = ""
    mirrors: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    base: str = ""
    gguf_file: str = ""
    embedded_package: str = ""
    size_gb: float = 0.0
    aliases: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ("chat",)
    decoding: Decoding = field(default_factory=Decoding)
    source: str = ""
    adapter_file: str = ""  # a GGUF LoRA adapter shipped beside the cards, applied at run time on the base GGUF
    default_for: tuple[str, ...] = ()  # commands that use this model when none is given ("chat", "extract")
    measured: str = ""  # what this project measured of it, shown by `models`

    @property
    def embedded(self) -> bool:
        return bool(self.embedded_package)

    @property
    def is_lora(self) -> bool:
        return self.format == "lora"


_TUPLE_FIELDS = {f.name for f in fields(ModelCard) if str(f.type).startswith("tuple")}
_REQUIRED = {f.name for f in fields(ModelCard) if f.default is MISSING and f.default_factory is MISSING}


def _reject_unknown(data: dict[str, Any], cls: type, where: str) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        section = "" if cls is ModelCard else " [decoding]"
        raise KnowLMError(
            f"model card {where} has unknown{section} keys: {', '.join(unknown)}",
            f"allowed: {', '.join(sorted(known))}",
        )


def _card_from_dict(data: dict[str, Any], where: str) -> ModelCard:
    _reject_unknown(data, ModelCard, where)
    missing = sorted(_REQUIRED - set(data))
    if missing:
        raise KnowLMError(f"model card {where} is missing: {', '.join(missing)}", "add them to the card")
    values = dict(data)
    dec = values.pop("decoding", {}) or {}
    _reject_unknown(dec, Decoding, where)
    for key in _TUPLE_FIELDS & set(values):
        values[key] = tuple(values[key])
    card = ModelCard(**values, decoding=Decoding(**dec))
    if card.template not in TEMPLATES:
        raise KnowLMError(f"model card {where}: template must be one of {TEMPLATES}", "fix the card")
    if card.format not in FORMATS:
        raise KnowLMError(f"model card {where}: format must be one of {FORMATS}", "fix the card")
    if card.is_lora and not card.base:
        raise KnowLMError(f"model card {where}: a LoRA card needs `base`", "name the base model's card")
    return card


def cards_dir() -> Path:
    """Where the shipped cards live (``models/`` in a checkout, package data when installed)."""
    return Path(str(resources.files("knowlm_local.models")))


@lru_cache(maxsize=4)
def load_cards(directory: str | None = None) -> tuple[ModelCard, ...]:
    """Read every ``*.toml`` card; names and aliases must be unique."""
    root = Path(directory) if directory else cards_dir()
    cards = []
    for path in sorted(root.glob("*.toml")):
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise KnowLMError(f"model card {path.name} is not valid TOML: {exc}", "fix the card") from exc
        cards.append(_card_from_dict(data, path.name))
    seen: dict[str, str] = {}
    for card in cards:
        for key in (card.name, *card.aliases):
            key = key.lower()
            if key in seen:
                raise KnowLMError(f"model name {key!r} is used by {seen[key]} and {card.name}", "rename one")
            seen[key] = card.name
    return tuple(sorted(cards, key=lambda c: c.name))


def find_card(name: str) -> ModelCard | None:
    """The card whose name, alias or hub repo id matches ``name`` (case-insensitive)."""
    key = name.lower()
    for card in load_cards():
        if key == card.name.lower() or key in (a.lower() for a in card.aliases):
            return card
        if key == card.hf_repo.lower() or (card.modelscope_repo and key == card.modelscope_repo.lower()):
            return card
    return None


def get_card(name: str) -> ModelCard:
    """Like :func:`find_card` but an unknown name is an error that suggests close names."""
    card = find_card(name)
    if card is None:
        raise unknown_model_error(name)
    return card


def embedded_card(purpose: str = "chat") -> ModelCard:
    """The built-in model (shipped inside Python packages, works offline) for ``purpose`` (chat or extract)."""
    built_in = [c for c in load_cards() if c.embedded]
    for card in built_in:
        if purpose in card.default_for:
            return card
    for card in built_in:
        if not card.adapter_file:
            return card
    raise KnowLMError("no embedded model card found", "reinstall knowlm-local")  # pragma: no cover


def adapter_path(card: ModelCard) -> Path:
    """The shipped GGUF adapter of ``card``; an error with the reinstall hint when it is missing."""
    path = cards_dir() / card.adapter_file
    if not path.is_file():
        raise KnowLMError(f"the adapter of {card.name} ({card.adapter_file}) is missing from the installation",
                          "reinstall knowlm-local (pip install -e . from the clone)")
    return path


def unknown_model_error(name: str, extra: list[str] | None = None) -> KnowLMError:
    """An error for an unknown model name, with the closest known names as the hint."""
    names = [c.name for c in load_cards()] + [a for c in load_cards() for a in c.aliases] + (extra or [])
    close = difflib.get_close_matches(name.lower(), [n.lower() for n in names], n=3, cutoff=0.4)
    hint = f"did you mean: {', '.join(close)}?" if close else "run `knowlm-local models` to list the zoo"
    return KnowLMError(f"unknown model {name!r}: not a zoo name, a hub repo id or a local path", hint)
