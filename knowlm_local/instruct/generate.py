"""Self-instruct with a local model: new tasks from seed tasks, one JSON-constrained call per task.

Each call shows the model a few example tasks (seed tasks, plus one task it generated earlier once there are
some, as self-instruct mixes human and machine tasks) and asks for one new task as a JSON object
``{"instruction", "input", "output"}``; on llama.cpp a JSON-schema grammar enforces that shape. A task is kept
unless it is

* ``cut off`` (the answer hit ``max_tokens``), ``not JSON`` / ``wrong JSON shape`` (a backend without schema
  support), ``empty`` (no instruction or no output);
* ``too short`` / ``too long``: an instruction of 3 words or fewer, or more than 150 (self-instruct's bounds);
* ``starts with punctuation``;
* ``blacklisted``: it asks for something a text model cannot do (images, graphs, pictures, files, maps,
  drawing, plotting, going somewhere, video, audio, music, flowcharts, diagrams; Chinese equivalents);
* ``too similar``: its ROUGE-L with a seed task or an earlier kept task is above ``rouge`` (0.7 by default).

Skipped tasks are counted by reason; a run stops after ``max_tries`` calls (5 per wanted task by default) even
when fewer tasks were kept, so a model that cannot do it ends with a summary rather than looping forever.

Resuming: the output grows as ``OUTPUT.partial``; with ``resume`` a run continues from its complete records.
The examples and sampling seed of each call depend only on ``seed``, the number of tasks kept before it and the
try number, so a resumed run asks what the uninterrupted run would have asked.
"""

from __future__ import annotations

import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from knowlm_local.errors import KnowLMError
from knowlm_local.instruct.ask import Progress, Tally, ask_json, call_seed, using
from knowlm_local.instruct.metrics import RougeIndex, words
from knowlm_local.instruct.prompts import GENERATE, string_schema, task_json
from knowlm_local.instruct.records import Item, JobOutput, check_output, read_items, record
from knowlm_local.runtime import LoadedModel, LoadOptions

BLACKLIST = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw",
             "plot", "go to", "video", "audio", "music", "flowchart", "diagram")
BLACKLIST_ZH = ("图片", "图像", "照片", "图表", "画出", "画一", "绘制", "文件", "地图", "视频", "音频", "音乐",
                "流程图", "示意图")
MIN_WORDS, MAX_WORDS = 4, 150
TRIES_PER_TASK = 5


def blacklisted(instruction: str) -> str | None:
    """The blacklisted word or phrase ``instruction`` uses, if any (whole words for English)."""
    joined = " " + " ".join(words(instruction)) + " "
    for w in BLACKLIST:
        if f" {w} " in joined:
            return w
    return next((w for w in BLACKLIST_ZH if w in instruction), None)


def check_task(instruction: str, output: str, pool: RougeIndex, rouge: float) -> tuple[str, str]:
    """``(reason, detail)`` why a generated task is not kept (``("", "")`` when it is)."""
    if not instruction or not output:
        return "empty", instruction or output
    n = len(words(instruction))
    if n < MIN_WORDS:
        return "too short", instruction
    if n > MAX_WORDS:
        return "too long", instruction
    if not instruction[0].isalnum() and instruction[0] not in "\"'“‘(（":
        return "starts with punctuation", instruction
    bad = blacklisted(instruction)
    if bad:
        return "blacklisted", f"{bad!r} in {instruction}"
    score, _ = pool.closest(instruction, rouge)
    if score > rouge:
        return "too similar", f"ROUGE-L {score:.2f}: {instruction}"
    return "", ""


def _examples(rng: random.Random, seeds: list[Item], made: list[dict[str, Any]], shots: int) -> str:
    machine = min(len(made), shots // 3)
    human = min(len(seeds), shots - machine)
    chosen = [task_json(s.instruction, s.input, s.output) for s in rng.sample(seeds, human)]
    chosen += [task_json(r["instruction"], r["input"], r["output"]) for r in rng.sample(made, machine)]
    rng.shuffle(chosen)
    return "\n".join(f"{i}. {c}" for i, c in enumerate(chosen, start=1))


def generate(seed_file: str | Path, output: str | Path, n: int = 100, *, loaded: LoadedModel | None = None,
             model: str | None = None, options: LoadOptions | None = None, shots: int = 3, rouge: float = 0.7,
             max_tokens: int = 384, temperature: float = 0.7, top_p: float = 0.95, seed: int = 0,
             lang: str | None = None, max_tries: int | None = None, resume: bool = False, force: bool = False,
             say=None, console: Any = None) -> Tally:
    """Generate ``n`` new tasks from the seed tasks in ``seed_file`` into ``output`` (Alpaca JSONL)."""
    from knowlm_local.ie.extract import detect_lang

    if n < 1 or shots < 1:
        raise KnowLMError("-n and --shots must be at least 1", "e.g. -n 100 --shots 3")
    if not 0.0 < rouge <= 1.0:
        raise KnowLMError(f"--rouge must be in (0, 1], got {rouge}", "0.7 is self-instruct's threshold")
    seeds = read_items(seed_file, "seed")
    out = check_output(output, force, resume, inputs=[seed_file])
    lang = lang or detect_lang(" ".join(s.instruction for s in seeds))
    if lang not in GENERATE:
        raise KnowLMError(f"unknown --lang {lang!r}", "choose en or zh")
    max_tries = max_tries or TRIES_PER_TASK * n
    tally = Tally()
    with using(loaded, model, options, say) as lm:
        params = lm.default_params(max_tokens=max_tokens, temperature=temperature, top_p=top_p, repeat_penalty=1.0)
        schema = string_schema("instruction", "input", "output")
        job = JobOutput(out, resume)
        made = list(job.done)
        tally.resumed = len(made)
        pool = RougeIndex([s.instruction for s in seeds] + [r.get("instruction", "") for r in made])
        attempt = 0
        with job.guard(lambda: f"{len(made)} of {n} tasks"):
            with Progress(console, n, "self-instruct", len(made)) as bar:
                while len(made) < n and tally.tried < max_tries:
                    slot = len(made)
                    rng = random.Random(call_seed(seed, "examples", slot, attempt))
                    content = GENERATE[lang].format(examples=_examples(rng, seeds, made, shots))
                    t0 = time.perf_counter()
                    value, reason, raw = ask_json(lm, content, schema,
                                                  replace(params, seed=call_seed(seed, "sample", slot, attempt)))
                    tally.seconds += time.perf_counter() - t0
                    tally.tried += 1
                    detail = raw
                    if value is not None:
                        instruction, output_text = value["instruction"].strip(), value["output"].strip()
                        reason, detail = check_task(instruction, output_text, pool, rouge)
                    if reason:
                        tally.skip(reason, detail)
                        attempt += 1
                    else:
                        rec = record(f"self-instruct-{slot}", instruction, value["input"].strip(), output_text,
                                     "self-instruct")
                        job.write(rec)
                        made.append(rec)
                        pool.add(instruction)
                        tally.kept += 1
                        attempt = 0
                    bar.update(len(made), tally)
    if len(made) < n:
        tally.notes.append(f"stopped after {tally.tried} tries (--max-tries) with {len(made)} of {n} tasks; "
                           "a larger model, more seed tasks or a higher --temperature keep more")
    return tally
