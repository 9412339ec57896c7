"""Edit requests: what fact to change, and the probes that check the change.

One request per JSONL line::

    {"prompt": "The Eiffel Tower is located in", "subject": "Eiffel Tower", "target": "Rome",
     "rephrases": ["Where is the Eiffel Tower? It is in"],
     "locality": ["The capital of Germany is"],
     "neighbours": ["The Statue of Liberty is located in"],
     "portability": [{"prompt": "The Eiffel Tower is in the country of", "answer": "Italy"}]}

The subject must occur in the prompt (ROME and MEMIT rewrite the MLP output at
the subject's last token); the target is the new continuation of the prompt.
``locality`` prompts are unrelated to the edit (EasyEdit's locality);
``neighbours`` share its relation with a subject of the same kind (CounterFact's
neighbourhood prompts): both must keep the model's own answers, and they are
scored apart because a neighbour is far harder to leave alone.
EasyEdit's and CounterFact's field names (``target_new``, ``rephrase_prompt``,
``locality_prompt``, ``neighborhood_prompts``)
are accepted too, so its request files can be used as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knowlm_local.errors import KnowLMError

REQUEST_HINT = ('each line must be a JSON object with "prompt", "subject" and "target" '
                '(optional "rephrases", "locality", "neighbours", "portability")')


@dataclass(frozen=True)
class Probe:
    """A prompt and, for portability, the answer it should now give."""

    prompt: str
    answer: str | None = None


@dataclass(frozen=True)
class EditRequest:
    prompt: str
    subject: str
    target: str
    rephrases: tuple[str, ...] = ()
    locality: tuple[str, ...] = ()
    neighbours: tuple[str, ...] = ()
    portability: tuple[Probe, ...] = ()
    id: str = ""
    where: str = ""  # "file:line" or "command line", for messages

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"prompt": self.prompt, "subject": self.subject, "target": self.target}
        if self.id:
            out["id"] = self.id
        if self.rephrases:
            out["rephrases"] = list(self.rephrases)
        if self.locality:
            out["locality"] = list(self.locality)
        if self.neighbours:
            out["neighbours"] = list(self.neighbours)
        if self.portability:
            out["portability"] = [{"prompt": p.prompt, "answer": p.answer} for p in self.portability]
        return out


def _strings(value: Any, key: str, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise KnowLMError(f"{where}: {key!r} must be a string or a list of non-empty strings", REQUEST_HINT)
    return tuple(value)


def _prompts(value: Any) -> Any:
    """A list of ``{"prompt": ...}`` objects (EasyEdit, CounterFact) as the list of its prompts."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return [d.get("prompt") for d in value]
    return value


def _probes(value: Any, where: str) -> tuple[Probe, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if isinstance(item, dict):
            prompt, answer = item.get("prompt"), item.get("answer", item.get("ground_truth"))
        else:
            prompt, answer = None, None
        if isinstance(answer, list) and answer and isinstance(answer[0], str):
            answer = answer[0]
        if not (isinstance(prompt, str) and prompt.strip() and isinstance(answer, str) and answer.strip()):
            raise KnowLMError(f"{where}: each portability probe must be {{\"prompt\": ..., \"answer\": ...}} "
                              "with non-empty strings", REQUEST_HINT)
        out.append(Probe(prompt, answer))
    return tuple(out)


def make_request(obj: dict[str, Any], where: str, index: int = 0) -> EditRequest:
    """Check one request object and return it as an :class:`EditRequest`."""
    if not isinstance(obj, dict):
        raise KnowLMError(f"{where}: an edit request must be a JSON object", REQUEST_HINT)
    prompt = obj.get("prompt")
    subject = obj.get("subject")
    target = obj.get("target", obj.get("target_new"))
    if isinstance(target, dict):  # EasyEdit/ROME style {"str": "..."}
        target = target.get("str")
    for key, value in (("prompt", prompt), ("subject", subject), ("target", target)):
        if not isinstance(value, str) or not value.strip():
            raise KnowLMError(f"{where}: {key!r} is missing or empty", REQUEST_HINT)
    if "{}" in prompt:  # ROME's own format: the prompt has a {} where the subject goes
        prompt = prompt.replace("{}", subject)
    if subject not in prompt:
        raise KnowLMError(f"{where}: the subject {subject!r} does not occur in the prompt {prompt!r}",
                          "write the subject exactly as it appears in the prompt (same case and spelling)")
    locality = _prompts(obj.get("locality", obj.get("locality_prompt")))
    key = next((k for k in ("neighbours", "neighbors", "neighborhood_prompts") if k in obj), None)
    neighbours = _prompts(obj[key]) if key else None
    return EditRequest(
        prompt=prompt, subject=subject, target=target.strip(),
        rephrases=_strings(obj.get("rephrases", obj.get("rephrase_prompt")), "rephrases", where),
        locality=_strings(locality, "locality", where),
        neighbours=_strings(neighbours, key or "neighbours", where),
        portability=_probes(obj.get("portability"), where),
        id=str(obj.get("id", index + 1)), where=where,
    )


def read_requests(path: str | Path) -> list[EditRequest]:
    """All requests of a JSONL file (or a JSON list); the first bad one is an error naming its line."""
    from knowlm_local.jsonio import iter_jsonl, loads, read_bytes

    path = Path(path)
    raw = read_bytes(path, "edit requests file", "pass a JSONL file of edit requests")
    if raw.lstrip().startswith(b"["):
        items = loads(raw.decode("utf-8", "replace"), str(path), REQUEST_HINT)
        reqs = [make_request(obj, f"{path}: item {i + 1}", i) for i, obj in enumerate(items)]
    else:
        reqs = [make_request(obj, f"{path}:{n}", i)
                for i, (n, obj) in enumerate(iter_jsonl(path, "edit requests file", REQUEST_HINT))]
    if not reqs:
        raise KnowLMError(f"{path} has no edit requests", REQUEST_HINT)
    return reqs
