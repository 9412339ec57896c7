"""Instruction back-translation with a local model: the instruction a document answers, kept on a self-rating.

For each document (a paragraph of a ``.txt`` file, a line with ``split="line"``, or the ``text`` of a ``.jsonl``
record) the model predicts, in one JSON-constrained call, the instruction a user could have given for which the
document is a good answer (self-augmentation); then it rates the (instruction, document) pair on a 5-point
scale and the pair is kept when the score is at least ``min_rating`` (4 by default; 0 keeps every pair unrated)
(self-curation). The record is ``{"instruction": predicted, "input": "", "output": document, "rating": n}``.

Skipped, by reason: ``too short`` / ``too long`` documents (fewer than ``min_words`` words, or a prompt that does
not fit the context), ``not JSON`` / ``wrong JSON shape`` / ``cut off`` / ``empty``, ``no rating`` (the model
gave no usable score) and ``rated below N``. Resuming works as for ``generate`` (by document id).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from knowlm_local.errors import KnowLMError
from knowlm_local.instruct.ask import Progress, Tally, ask_json, call_seed, using
from knowlm_local.instruct.metrics import words
from knowlm_local.instruct.prompts import BACKTRANSLATE, string_schema
from knowlm_local.instruct.records import JobOutput, check_output, read_documents, record
from knowlm_local.instruct.score import rate
from knowlm_local.runtime import LoadedModel, LoadOptions


def backtranslate(source: str | Path, output: str | Path, *, loaded: LoadedModel | None = None,
                  model: str | None = None, options: LoadOptions | None = None, split: str = "para",
                  text_field: str = "text", min_rating: int = 4, min_words: int = 5, max_tokens: int = 128,
                  temperature: float = 0.7, top_p: float = 0.95, seed: int = 0, lang: str | None = None,
                  limit: int | None = None, resume: bool = False, force: bool = False, say=None,
                  console: Any = None) -> Tally:
    """Back-translate the documents of ``source`` into instruction records in ``output``."""
    from knowlm_local.ie.extract import detect_lang

    if not 0 <= min_rating <= 5:
        raise KnowLMError(f"--min-rating must be between 0 and 5, got {min_rating}", "4 keeps pairs rated 4 or 5")
    docs = read_documents(source, split, text_field)
    if not docs:
        raise KnowLMError(f"{source} holds no documents", "give a .txt file (paragraphs) or .jsonl with \"text\"")
    docs = docs[:limit] if limit else docs
    out = check_output(output, force, resume, inputs=[source])
    tally = Tally()
    with using(loaded, model, options, say) as lm:
        params = lm.default_params(max_tokens=max_tokens, temperature=temperature, top_p=top_p, repeat_penalty=1.0)
        schema = string_schema("instruction")
        job = JobOutput(out, resume)
        done = {r.get("doc") for r in job.done}
        tally.resumed = len(job.done)
        already = len(done & {d[0] for d in docs})
        with job.guard(lambda: f"{tally.tried} documents"):
            with Progress(console, len(docs), "backtranslate", already) as bar:
                for doc_id, text in docs:
                    if doc_id in done:
                        continue
                    t0 = time.perf_counter()
                    rec, reason, detail = _one(lm, doc_id, text, lang or detect_lang(text), schema, params, seed,
                                               min_rating, min_words)
                    tally.seconds += time.perf_counter() - t0
                    tally.tried += 1
                    if rec is not None:
                        job.write(rec)
                        tally.kept += 1
                    else:
                        tally.skip(reason, detail)
                    bar.update(already + tally.tried, tally)
    return tally


def _one(lm: LoadedModel, doc_id: str, text: str, lang: str, schema: dict, params: Any, seed: int,
         min_rating: int, min_words: int) -> tuple[dict[str, Any] | None, str, str]:
    """``(record, "", "")`` for one document, or ``(None, reason, detail)`` why there is none."""
    if len(words(text)) < min_words:
        return None, "too short", text
    value, reason, raw = ask_json(lm, BACKTRANSLATE[lang].format(document=text), schema,
                                  replace(params, seed=call_seed(seed, doc_id)))
    if value is None:
        return None, ("too long" if reason.startswith("prompt too long") else reason), raw or text[:80]
    instruction = value["instruction"].strip()
    if not instruction:
        return None, "empty", raw
    score = rate(lm, instruction, "", text, lang) if min_rating else None
    if min_rating and score is None:
        return None, "no rating", instruction
    if min_rating and score < min_rating:
        return None, f"rated below {min_rating}", f"{score}: {instruction}"
    extra = {"rating": score} if score is not None else {}
    return record(f"bt-{doc_id}", instruction, "", text, "backtranslation", doc=doc_id, **extra), "", ""
