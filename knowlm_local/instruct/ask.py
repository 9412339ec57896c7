"""Talking to the local model for instruction processing: one JSON object per call, answers, counters, progress.

Every call goes through :func:`knowlm_local.runtime.load_model`'s backend contract, with the chat message
rendered by the model's own template. :func:`ask_json` never raises for a bad answer: it returns the reason
(``cut off``, ``not JSON``, ``wrong JSON shape``, ``prompt too long``) so a job can count it and go on. Answers to
instructions are prompted exactly as ``finetune`` will train on them (:func:`knowlm_local.train.sft_data.render`).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from knowlm_local.params import GenerationParams
from knowlm_local.runtime import LoadedModel, LoadOptions

CONTEXT_MARGIN = 8  # tokens an answer needs at the least


@dataclass
class Tally:
    """What a job tried, kept and skipped (by reason), and how long the model calls took."""

    tried: int = 0
    kept: int = 0
    resumed: int = 0  # records already in the output when the job resumed
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def skip(self, reason: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        if len(self.examples) < 5 and detail:
            self.examples.append(f"{reason}: {detail[:160]}")

    def lines(self, what: str = "records") -> list[str]:
        per = f", {self.seconds / self.tried:.2f} s per try" if self.tried else ""
        out = [f"tried {self.tried}, kept {self.kept} {what}" + (f" (+{self.resumed} from the resumed output)"
                                                                 if self.resumed else "")
               + f" in {self.seconds:.1f} s{per}"]
        if self.skipped:
            out.append(f"skipped {sum(self.skipped.values())}: "
                       + ", ".join(f"{reason} {n}" for reason, n in self.skipped.most_common()))
            out += [f"  e.g. {e}" for e in self.examples[:3]]
        return out + self.notes


def load(model: str | None, options: LoadOptions | None, say=None) -> LoadedModel:
    """The model for instruction work (default: as ``chat`` picks it, the embedded model offline)."""
    from knowlm_local.runtime import load_model

    loaded = load_model(model, options or LoadOptions(), purpose="instruct")
    if say and loaded.resolved.note:
        say(loaded.resolved.note)
    return loaded


@contextlib.contextmanager
def using(loaded: LoadedModel | None, model: str | None, options: LoadOptions | None, say=None
          ) -> Iterator[LoadedModel]:
    """``loaded`` as it is, or a model loaded now and closed at the end."""
    if loaded is not None:
        yield loaded
        return
    mine = load(model, options, say)
    try:
        yield mine
    finally:
        mine.backend.close()


def chat_prompt(loaded: LoadedModel, content: str) -> str:
    return loaded.template.render([{"role": "user", "content": content}])


def fits(loaded: LoadedModel, prompt: str) -> bool:
    return loaded.backend.count_tokens(prompt) + CONTEXT_MARGIN < loaded.backend.n_ctx


def ask_json(loaded: LoadedModel, content: str, schema: dict[str, Any], params: GenerationParams
             ) -> tuple[dict[str, Any] | None, str, str]:
    """``(object, reason, raw text)``: the model's JSON answer to ``content``, or None and why it is unusable."""
    from knowlm_local.ie.parse import parse_answer

    prompt = chat_prompt(loaded, content)
    if not fits(loaded, prompt):
        return None, "prompt too long for the context", ""
    text, last = loaded.backend.complete(prompt, params, json_schema=schema)
    if last.finish_reason == "length":
        return None, "cut off at --max-tokens", text
    parsed = parse_answer(text)
    value = parsed.value
    if not parsed.ok or not isinstance(value, dict):
        return None, "not JSON", text
    for key, spec in schema["properties"].items():
        want = str if spec.get("type") == "string" else int
        got = value.get(key)
        if not isinstance(got, want) or isinstance(got, bool):
            return None, "wrong JSON shape", text
    return value, "", text


def answer(loaded: LoadedModel, instruction: str, input_text: str, params: GenerationParams) -> tuple[str, str]:
    """``(text, reason)``: the model's answer to an instruction, prompted as ``finetune`` trains; reason if unusable."""
    from knowlm_local.train.sft_data import render

    prompt, _ = render({"instruction": instruction, "input": input_text, "output": ""}, loaded.template)
    if not fits(loaded, prompt):
        return "", "prompt too long for the context"
    text, last = loaded.backend.complete(prompt, params)
    if last.finish_reason == "length":
        return text, "answer cut off at --max-tokens"
    text = text.strip()
    if not any(c.isalnum() for c in text):
        return text, "empty answer"
    return text, ""


def call_seed(seed: int, *parts: Any) -> int:
    """A sampling seed for one call, from the job's seed and the call's place (stable across runs and resumes)."""
    import hashlib

    digest = hashlib.sha256("\x00".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class Progress:
    """A rich progress bar on stderr (only on a terminal), counting kept records towards ``total``."""

    def __init__(self, console: Any, total: int, label: str, done: int = 0) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        self.bar = Bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[status]}"), TimeRemainingColumn(), console=console,
                       disable=console is None or not console.is_terminal)
        self.task = self.bar.add_task(label, total=total, completed=done, status="")

    def __enter__(self) -> Progress:  # noqa: PYI034 (typing.Self needs Python 3.11)
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def update(self, done: int, tally: Tally) -> None:
        skipped = sum(tally.skipped.values())
        self.bar.update(self.task, completed=done, status=f"skipped {skipped}" if skipped else "")
