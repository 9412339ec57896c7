"""IKE: an edit held in the prompt, not the weights (Zheng et al., 2023). It changes no weights.

The memory is a JSON file of facts. For a prompt, the facts that mention its
subject (else all of them) are put in front as "New Fact: ..." lines after
three kinds of demonstrations the method is known for: *copy* (the fact's own
prompt gives its target), *update* (a rephrased prompt gives it too) and
*retain* (an unrelated prompt keeps its usual answer). ``chat --edit-memory``
turns the same memory into a system prompt.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from knowlm_local.edit.model import join
from knowlm_local.edit.requests import EditRequest, Probe, make_request
from knowlm_local.errors import KnowLMError

KIND = "knowlm-edit-memory"

# Demonstrations written for this project: one of each kind, on made-up facts.
DEMOS = (
    "New Fact: The Louvre is located in Madrid.\nPrompt: The Louvre is located in Madrid.\n\n"
    "New Fact: The Louvre is located in Madrid.\nPrompt: Which city is the Louvre in? Madrid.\n\n"
    "New Fact: The Louvre is located in Madrid.\nPrompt: The capital of Japan is Tokyo.\n\n"
)


def fact_text(req: EditRequest) -> str:
    return join(req.prompt, req.target) + ("" if req.target[-1:] in ".。!?！？" else ".")


def relevant(facts: list[EditRequest], prompt: str) -> list[EditRequest]:
    hits = [f for f in facts if f.subject in prompt]
    return hits or facts


def prefixed(facts: list[EditRequest], prompt: str) -> str:
    """``prompt`` behind the demonstrations and the facts relevant to it."""
    lines = "".join(f"New Fact: {fact_text(f)}\n" for f in relevant(facts, prompt))
    return f"{DEMOS}{lines}Prompt: {prompt}"


def in_context(facts: list[EditRequest], req: EditRequest) -> EditRequest:
    """``req`` with every probe prompt behind the memory: what the edited "model" sees."""
    return replace(
        req, prompt=prefixed(facts, req.prompt), rephrases=tuple(prefixed(facts, r) for r in req.rephrases),
        locality=tuple(prefixed(facts, p) for p in req.locality),
        neighbours=tuple(prefixed(facts, p) for p in req.neighbours),
        portability=tuple(Probe(prefixed(facts, p.prompt), p.answer) for p in req.portability))


def chat_system(facts: list[EditRequest], system: str | None = None) -> str:
    """A system prompt that carries the memory into ``chat``."""
    lines = "\n".join(f"- {fact_text(f)}" for f in facts)
    head = ("These facts are true and replace anything you learned before; use them when they apply, "
            f"and answer everything else as usual:\n{lines}")
    return f"{system}\n\n{head}" if system else head


def write_memory(path: Path, facts: list[EditRequest], model: str, force: bool = False) -> Path:
    from knowlm_local.io_utils import atomic_write_text

    old: list[dict[str, Any]] = []
    if path.exists():
        if not force:
            data = read_memory_data(path)
            old = data["facts"]
    data = {"kind": KIND, "format": 1, "model": model, "note": "in-context edits (IKE): no weights were changed",
            "facts": old + [f.to_json() for f in facts]}
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")
    return path


def read_memory_data(path: Path) -> dict[str, Any]:
    from knowlm_local.jsonio import read_json

    data = read_json(Path(path), "edit memory", hint="pass a memory file written by `knowlm-local edit --method ike`")
    if data.get("kind") != KIND or not isinstance(data.get("facts"), list):
        raise KnowLMError(f"{path} is not an edit memory", "pass a file written by `knowlm-local edit --method ike`")
    return data


def read_memory(path: str | Path) -> list[EditRequest]:
    data = read_memory_data(Path(path))
    return [make_request(f, f"{path}: fact {i + 1}", i) for i, f in enumerate(data["facts"])]
