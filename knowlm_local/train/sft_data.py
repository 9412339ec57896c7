"""Supervised fine-tuning examples: records -> the exact prompt the model will see at inference -> tokens.

Three kinds of JSONL records are read (mixed freely in one file):

* IE instructions from ``build-ie-data`` (``task``, ``lang``, ``schema``,
  ``text``, ``instruction``, ``output``): the prompt is built by
  :func:`knowlm_local.ie.prompt.build_prompt` in the form the model's template
  implies, the very function ``extract`` uses, so a model is trained on the
  prompts it will be asked; IEPile records with only ``instruction`` and
  ``output`` work too (the OneKE and chat forms need nothing else);
* Alpaca records (``instruction``, optional ``input``, ``output``);
* chat records (``messages``: the last one is the assistant's answer).

The answer is followed by the tokenizer's EOS, which stays in the labels
(alpaca-lora's "pad = eos" mistake masks it with the padding and the model
never learns to stop); padding is masked by position, never by token id, and
the pad token is chosen distinct from EOS anyway. With ``response_only`` the
prompt's labels are -100. Packing puts several examples in one row with
position ids restarting at each, which transformers turns into a
block-diagonal attention mask, so packed examples never see each other.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from knowlm_local.errors import KnowLMError
from knowlm_local.prompts import Template

IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]


@dataclass
class DataReport:
    files: int = 0
    records: int = 0
    examples: int = 0
    skipped: Counter = field(default_factory=Counter)
    truncated: int = 0
    tokens: int = 0
    label_tokens: int = 0
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{self.examples} examples from {self.records} records in {self.files} file(s): {self.tokens} tokens, "
               f"{self.label_tokens} of them trained on; {self.truncated} cut at max_len"]
        out += [f"skipped {n}: {why}" for why, n in self.skipped.items()]
        out += self.problems[:5]
        return out


def choose_pad(tokenizer: Any) -> int:
    """A pad token id distinct from EOS: the tokenizer's own if it is not EOS, else unk, else another special."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    if pad is not None and pad != eos:
        return int(pad)
    for cand in (tokenizer.unk_token_id, *getattr(tokenizer, "all_special_ids", [])):
        if cand is not None and cand not in (eos, tokenizer.bos_token_id):
            return int(cand)
    raise KnowLMError("the tokenizer has no token to pad with other than EOS",
                      "add a pad token to the tokenizer (tokenizer.add_special_tokens) and save it with the model")


def template_for(name: str, tokenizer: Any, card: Any = None) -> Template:
    """The prompt template a run trains with: ``auto`` is what chat/extract would use for this model."""
    from knowlm_local.prompts import get_template

    if name == "auto":
        name = card.template if card is not None else ("gguf" if getattr(tokenizer, "chat_template", None) else "alpaca")
    bos = tokenizer.bos_token or ""
    eos = tokenizer.eos_token or ""
    adds_bos = bool(tokenizer("", add_special_tokens=True)["input_ids"])
    return get_template(name, getattr(tokenizer, "chat_template", None), bos, eos, adds_bos)


def render(record: dict[str, Any], template: Template) -> tuple[str, str]:
    """(prompt, answer) of one record, the prompt exactly as inference will build it."""
    from knowlm_local.ie.prompt import build_prompt, form_for
    from knowlm_local.prompts import alpaca_prompt

    form = form_for(template)
    if isinstance(record.get("messages"), list):
        msgs = record["messages"]
        if not msgs or not isinstance(msgs[-1], dict) or msgs[-1].get("role") != "assistant":
            raise ValueError("the last message is not the assistant's answer")
        return template.render(msgs[:-1]), str(msgs[-1].get("content", ""))
    answer = record.get("output")
    if not isinstance(answer, str):
        raise ValueError('no "output" string')
    task = record.get("task")
    if task and str(task).lower() != "general" and isinstance(record.get("instruction"), str):
        if all(k in record for k in ("lang", "schema", "text")):
            return build_prompt(form, str(task), record["lang"], record["schema"], record["text"], template), answer
        if form == "alpaca":
            raise ValueError("an IE record for an Alpaca model needs lang, schema and text (write it with build-ie-data)")
        if form == "oneke":
            from knowlm_local.prompts import oneke_prompt

            return oneke_prompt(record["instruction"]), answer
        return template.render([{"role": "user", "content": record["instruction"]}]), answer
    instruction = record.get("instruction")
    if not isinstance(instruction, str):
        raise ValueError('no "instruction" string')
    extra = record.get("input") or ""
    if form == "alpaca":
        return alpaca_prompt(instruction, str(extra)), answer
    user = f"{instruction}\n\n{extra}" if extra else instruction
    if form == "oneke":
        from knowlm_local.prompts import oneke_prompt

        return oneke_prompt(user), answer
    return template.render([{"role": "user", "content": user}]), answer


def tokenize(prompt: str, answer: str, tokenizer: Any, max_len: int, response_only: bool) -> tuple[Example | None, bool]:
    """One example (None when the prompt alone fills ``max_len``) and whether it was cut."""
    p = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    a = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(p) >= max_len:
        return None, False
    ids = (p + a)[:max_len]
    cut = len(p) + len(a) > max_len
    labels = ([IGNORE] * len(p) if response_only else list(p)) + a
    return Example(ids, labels[:max_len]), cut


def load_examples(files: list[str], tokenizer: Any, template: Template, max_len: int, response_only: bool = True,
                  say=None) -> tuple[list[Example], DataReport]:
    """Every example of ``files``; bad lines and unusable records are skipped and reported (file and line)."""
    from knowlm_local.jsonio import iter_jsonl

    report = DataReport()
    examples: list[Example] = []
    if not files:
        raise KnowLMError("the recipe names no training data (data.train)", "list JSONL files under data: train:")
    for name in files:
        path = Path(name)
        report.files += 1
        problems: list[str] = []
        for line_no, record in iter_jsonl(path, "training data", skip_bad=True, problems=problems):
            report.records += 1
            try:
                prompt, answer = render(record, template)
            except (ValueError, KnowLMError) as exc:
                report.skipped["unusable record"] += 1
                report.problems.append(f"{path}:{line_no}: {getattr(exc, 'message', exc)}")
                continue
            ex, cut = tokenize(prompt, answer, tokenizer, max_len, response_only)
            if ex is None:
                report.skipped[f"prompt of {max_len}+ tokens"] += 1
                continue
            report.truncated += cut
            report.examples += 1
            report.tokens += len(ex.input_ids)
            report.label_tokens += sum(1 for x in ex.labels if x != IGNORE)
            examples.append(ex)
        report.skipped["bad line"] += len(problems)
        report.problems += problems
    report.skipped = Counter({k: v for k, v in report.skipped.items() if v})
    if not examples:
        why = "; ".join(f"{n} skipped: {reason}" for reason, n in report.skipped.most_common(2))
        hint = ("raise data.max_len" if any("tokens" in r for r in report.skipped) else
                "records need instruction/output (Alpaca or build-ie-data) or messages")
        raise KnowLMError(f"no usable training example in {', '.join(files)} ({why or 'no records'})", hint)
    if say:
        for line in report.lines():
            say(line)
    return examples, report


def pack(examples: list[Example], max_len: int) -> list[dict[str, list[int]]]:
    """Rows of at most ``max_len`` tokens holding several examples each, with restarting position ids.

    Best-fit decreasing (longest example first, into the fullest row it still
    fits), so rows come out nearly full; the trainer shuffles rows anyway.
    """
    import bisect

    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row index), sorted
    for i in order:
        n = len(examples[i].input_ids)
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, r = free.pop(k)
            rows[r].append(i)
            bisect.insort(free, (room - n, r))
        else:
            rows.append([i])
            bisect.insort(free, (max_len - n, len(rows) - 1))
    out = []
    for members in rows:
        row: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
        for i in sorted(members):  # the examples' own order inside a row
            ex = examples[i]
            row["input_ids"] += ex.input_ids
            row["labels"] += ex.labels
            row["position_ids"] += list(range(len(ex.input_ids)))
        out.append(row)
    return out


def unpacked(examples: list[Example]) -> list[dict[str, list[int]]]:
    return [{"input_ids": ex.input_ids, "labels": ex.labels} for ex in examples]


class Collator:
    """Right-pads a batch; rows with position ids (packed) get no attention mask, padding gets its own block."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids, labels, pos, mask = [], [], [], []
        for r in rows:
            n = len(r["input_ids"])
            gap = width - n
            ids.append(r["input_ids"] + [self.pad_id] * gap)
            labels.append(r["labels"] + [IGNORE] * gap)
            if "position_ids" in r:
                pos.append(r["position_ids"] + list(range(gap)))
            else:
                mask.append([1] * n + [0] * gap)
        out: dict[str, Any] = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                               "n_tokens": torch.tensor(sum(len(r["input_ids"]) for r in rows))}
        if pos:
            out["position_ids"] = torch.tensor(pos)
        else:
            out["attention_mask"] = torch.tensor(mask)
        return out


def describe(examples: list[Example]) -> str:
    lengths = sorted(len(e.input_ids) for e in examples)
    return json.dumps({"examples": len(lengths), "median_tokens": lengths[len(lengths) // 2],
                       "max_tokens": lengths[-1]})
