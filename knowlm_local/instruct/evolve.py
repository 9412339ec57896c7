"""Evol-Instruct with a local model: rewrite each task into a harder (in depth) or new (in breadth) one, answer it.

Operations (``ops``): in depth ``constraints`` (add a constraint or requirement), ``deepen`` (more depth and
breadth), ``concretize`` (general ideas made specific), ``reasoning`` (needs several explicit steps); in breadth
``broaden`` (a new, rarer task in the same domain). Each record gets one operation per round, drawn from ``ops``
with a seeded generator; ``rounds`` > 1 evolves the result again (the record of the last round is written).

One JSON-constrained call rewrites the task (``{"instruction", "input"}``), a second answers it, prompted
exactly as ``finetune`` will train on it. An evolution is eliminated, as Evol-Instruct eliminates failed ones,
when it is

* ``not JSON`` / ``wrong JSON shape`` / ``cut off`` / ``empty``;
* ``unchanged``: no gain over the original (ROUGE-L with it of 0.9 or more);
* ``copied the request``: it carries words of the rewriting request ("given task", "rewritten task", ...);
* ``refused``: the answer apologises ("sorry", "as an AI", ...) and is short (under 80 words), a sign the task is
  too hard for the model; ``empty answer`` (no letters or digits) and ``answer cut off`` (``max_tokens``).

Resuming works as for ``generate``: the output grows as ``OUTPUT.partial``; ``resume`` skips the input records
whose evolution is already there (``parent`` ids).
"""

from __future__ import annotations

import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from knowlm_local.errors import KnowLMError
from knowlm_local.instruct.ask import Progress, Tally, answer, ask_json, call_seed, using
from knowlm_local.instruct.metrics import rouge_l, words
from knowlm_local.instruct.prompts import EVOLVE, EVOLVE_OPS, string_schema, task_json
from knowlm_local.instruct.records import JobOutput, check_output, read_items, record
from knowlm_local.runtime import LoadedModel, LoadOptions

OPS = tuple(EVOLVE_OPS)
UNCHANGED = 0.9
COPIED = ("given task", "rewritten task", "the new task", "改写", "原任务", "新任务")
REFUSALS = ("sorry", "as an ai", "i cannot", "i can't", "i am unable", "i'm unable", "抱歉", "对不起", "无法回答")
SHORT_REFUSAL_WORDS = 80


def parse_ops(ops: str | list[str] | None) -> list[str]:
    """The operation names (comma-separated or a list; None: all), checked."""
    names = OPS if ops is None else [o.strip() for o in (ops.split(",") if isinstance(ops, str) else ops) if o.strip()]
    bad = [o for o in names if o not in EVOLVE_OPS]
    if bad or not names:
        raise KnowLMError(f"unknown evolution operation(s): {', '.join(bad) or '(none given)'}",
                          f"choose from: {', '.join(OPS)}")
    return list(names)


def check_evolution(original: str, instruction: str) -> tuple[str, str]:
    if not instruction:
        return "empty", ""
    if rouge_l(original, instruction) >= UNCHANGED:
        return "unchanged", instruction
    low = instruction.lower()
    hit = next((w for w in COPIED if w in low), None)
    if hit:
        return "copied the request", f"{hit!r} in {instruction}"
    return "", ""


def check_answer(text: str) -> tuple[str, str]:
    low = text.lower()
    if any(r in low for r in REFUSALS) and len(words(text)) < SHORT_REFUSAL_WORDS:
        return "refused", text
    return "", ""


def evolve(source: str | Path, output: str | Path, *, loaded: LoadedModel | None = None, model: str | None = None,
           options: LoadOptions | None = None, ops: str | list[str] | None = None, rounds: int = 1,
           max_tokens: int = 384, temperature: float = 0.7, top_p: float = 0.95, seed: int = 0,
           lang: str | None = None, limit: int | None = None, resume: bool = False, force: bool = False,
           say=None, console: Any = None) -> Tally:
    """Evolve every record of ``source`` (Alpaca JSONL) into ``output``; returns the counters."""
    from knowlm_local.ie.extract import detect_lang

    names = parse_ops(ops)
    if rounds < 1:
        raise KnowLMError("--rounds must be at least 1", "e.g. --rounds 2 evolves each result once more")
    items = read_items(source, "input")
    items = items[:limit] if limit else items
    out = check_output(output, force, resume, inputs=[source])
    tally = Tally()
    with using(loaded, model, options, say) as lm:
        params = lm.default_params(max_tokens=max_tokens, temperature=temperature, top_p=top_p)
        json_params = replace(params, repeat_penalty=1.0)
        schema = string_schema("instruction", "input")
        job = JobOutput(out, resume)
        done = {r.get("parent") for r in job.done}
        tally.resumed = len(job.done)
        with job.guard(lambda: f"{tally.tried} records"):
            already = len(done & {i.id for i in items})
            with Progress(console, len(items), "evolve", already) as bar:
                for index, item in enumerate(items):
                    if item.id in done:
                        continue
                    item_lang = lang or detect_lang(item.instruction + item.input)
                    instruction, input_text, steps = item.instruction, item.input, []
                    t0 = time.perf_counter()
                    reason = detail = ""
                    for rnd in range(rounds):
                        op = random.Random(call_seed(seed, "op", item.id, rnd)).choice(names)
                        content = EVOLVE[item_lang].format(operation=EVOLVE_OPS[op][item_lang],
                                                           task=task_json(instruction, input_text))
                        value, reason, detail = ask_json(lm, content, schema,
                                                         replace(json_params, seed=call_seed(seed, item.id, rnd)))
                        if value is not None:
                            new = value["instruction"].strip()
                            reason, detail = check_evolution(instruction, new)
                            instruction, input_text = new, value["input"].strip()
                        if reason:
                            break
                        steps.append(op)
                    if not reason:
                        text, reason = answer(lm, instruction, input_text,
                                              replace(params, seed=call_seed(seed, "answer", item.id)))
                        detail = text
                        if not reason:
                            reason, detail = check_answer(text)
                    tally.seconds += time.perf_counter() - t0
                    tally.tried += 1
                    if reason:
                        tally.skip(reason, detail)
                    else:
                        job.write(record(f"evol-{index}", instruction, input_text, text,
                                         "evol-instruct:" + "+".join(steps), parent=item.id))
                        tally.kept += 1
                    bar.update(already + tally.tried, tally)
    return tally
