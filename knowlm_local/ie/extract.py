"""The extraction pipeline: record -> chunks x schema groups -> constrained answers -> one merged record.

Speed comes from three things, none of which changes what the model is asked
(llama.cpp's numerics can still flip a rare near-tie token, see
:mod:`knowlm_local.ie.run`):

* prompt order: instruction and schema first, text last, and all chunks of a
  record asked group by group, so consecutive prompts share their leading
  tokens and llama.cpp evaluates only the new text (KV-cache prefix reuse);
* sentence-aware chunks sized to the budget, so one prompt covers as many
  sentences as the model handles well instead of one prompt per sentence;
* optional speculative decoding with drafts copied from the text and from the
  previous answers (:mod:`knowlm_local.ie.speculate`).

Answers are decoded greedily under a JSON grammar built from the schema
(:mod:`knowlm_local.ie.constrain`), so they parse; backends that cannot
constrain are read with the tolerant parser, and whatever still fails is
recorded in the record's ``errors`` rather than raised.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from knowlm_local.errors import KnowLMError
from knowlm_local.ie.chunk import chunk_spans
from knowlm_local.ie.constrain import answer_schema
from knowlm_local.ie.copy import DEFAULT_MAX_ITEMS, Constraint, check_mode
from knowlm_local.ie.parse import parse_answer
from knowlm_local.ie.prompt import build_prompt, form_for
from knowlm_local.ie.results import empty_result, merge_into, normalize
from knowlm_local.ie.spans import locate
from knowlm_local.ie.tasks import Schema, get_task, group_labels, split_groups, validate_schema
from knowlm_local.params import GenerationParams
from knowlm_local.runtime import LoadedModel

DEFAULT_CHUNK_TOKENS = 256  # with a ~150-token instruction this keeps sources near OneKE's 400-token training length
LANGS = ("zh", "en")


def detect_lang(text: str) -> str:
    """``zh`` when CJK characters make up a fifth of the letters in the first 2000 characters, else ``en``."""
    sample = text[:2000]
    cjk = sum(1 for c in sample if "\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf")
    letters = sum(1 for c in sample if c.isalpha())
    return "zh" if letters and cjk / letters >= 0.2 else "en"


@dataclass
class Stats:
    """Counters over a run (what `extract` prints at the end and the benchmark reads)."""

    records: int = 0
    chunks: int = 0
    calls: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    output_chars: int = 0
    generate_seconds: float = 0.0
    unparseable: int = 0
    truncated: int = 0
    repaired: int = 0
    spans: int = 0
    hallucinated: int = 0
    started: float = field(default_factory=time.perf_counter)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def hallucination_rate(self) -> float:
        return self.hallucinated / self.spans if self.spans else 0.0


class Extractor:
    """One task and schema (or the language's default schema) over any loaded model."""

    def __init__(self, model: LoadedModel, task: str, schema: Any = None, lang: str | None = None,
                 params: GenerationParams | None = None, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                 form: str | None = None, constrained: bool = True, draft: Any = None, copy: str = "strict",
                 max_items: int = DEFAULT_MAX_ITEMS, multi_label: bool = False) -> None:
        self.model = model
        self.task = get_task(task).name
        self.schema = validate_schema(self.task, schema) if schema is not None else None
        if lang not in (None, *LANGS):
            raise KnowLMError(f"unknown language {lang!r}", "use --lang zh or --lang en (or leave it out to detect)")
        self.lang = lang
        self.params = params or model.default_params(temperature=0.0, repeat_penalty=1.0)
        if chunk_tokens < 1:
            raise KnowLMError("--chunk-tokens must be at least 1", "the default is 256")
        self.chunk_tokens = chunk_tokens
        self.form = form or form_for(model.template)
        self.constrained = constrained and model.backend.supports_schema
        self.draft = draft
        self.copy = check_mode(copy)
        if not 1 <= max_items <= 1000:
            raise KnowLMError(f"--max-items must be between 1 and 1000, got {max_items}", "the default is 24")
        self.max_items = max_items
        self.one_label = False if multi_label else None  # None: as the task defines it (NER: one label per span)
        self.stats = Stats()
        self._budgets: dict[str, int] = {}
        self._grammars: dict[str, dict[str, Any]] = {}

    # -- pieces --------------------------------------------------------------
    def schema_for(self, lang: str) -> Schema:
        return self.schema if self.schema is not None else get_task(self.task).default_schema[lang]

    def count(self, text: str) -> int:
        return len(self.model.backend.tokenize(text, add_bos=False))

    def prompt(self, lang: str, group: Schema, text: str) -> str:
        return build_prompt(self.form, self.task, lang, group, text, self.model.template)

    def budget(self, lang: str, groups: list[Schema]) -> int:
        """Tokens of text one chunk may hold: the context minus the longest instruction and the answer room."""
        key = json.dumps([lang, groups], ensure_ascii=False, sort_keys=True)
        if key not in self._budgets:
            overhead = max(self.model.backend.count_tokens(self.prompt(lang, g, ".")) for g in groups)
            n_ctx = self.model.backend.n_ctx
            room = n_ctx - overhead - min(self.params.max_tokens, n_ctx // 2) - 8
            if room < 16:
                raise KnowLMError(
                    f"the context window ({n_ctx} tokens) leaves no room for text after the {overhead}-token "
                    f"instruction and a {self.params.max_tokens}-token answer",
                    "raise --ctx, lower --max-tokens, or use a smaller schema",
                )
            self._budgets[key] = min(self.chunk_tokens, room)
        return self._budgets[key]

    def _grammar(self, group: Schema) -> dict[str, Any] | None:
        if not self.constrained:
            return None
        key = json.dumps(group, ensure_ascii=False, sort_keys=True)
        if key not in self._grammars:
            self._grammars[key] = answer_schema(self.task, group, max_items=self.max_items)
        return self._grammars[key]

    def ask(self, lang: str, group: Schema, text: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """One prompt, one answer: the normalized partial result and any problems with it."""
        labels = group_labels(self.task, group)
        prompt = self.prompt(lang, group, text)
        t0 = time.perf_counter()
        grammar = self._grammar(group)
        copy = None
        if grammar is not None and self.copy != "off" and self.model.backend.supports_copy:
            copy = Constraint(self.task, text, mode=self.copy, max_items=self.max_items, one_label=self.one_label)
        answer, last = self.model.backend.complete(prompt, self.params, json_schema=grammar, copy=copy)
        st = self.stats
        st.generate_seconds += time.perf_counter() - t0
        st.calls += 1
        st.prompt_tokens += last.prompt_tokens
        st.cached_tokens += last.cached_tokens
        st.output_chars += len(answer)
        problems: list[dict[str, Any]] = []
        parsed = parse_answer(answer)
        if not parsed.ok:
            st.unparseable += 1
            problems.append({"kind": "unparseable", "message": parsed.error, "answer": answer[:500]})
            return empty_result(self.task, labels), problems
        if last.finish_reason == "length":
            st.truncated += 1
            problems.append({"kind": "truncated", "message": f"the answer hit --max-tokens ({self.params.max_tokens}); "
                             "what was complete is kept", "answer": answer[-200:]})
        elif not parsed.clean:
            st.repaired += 1
            problems.append({"kind": "repaired", "message": ", ".join(parsed.repairs), "answer": answer[:500]})
        result, notes = normalize(self.task, labels, parsed.value)
        problems += [{"kind": "schema", "message": note} for note in notes]
        return result, problems

    # -- a whole record ------------------------------------------------------
    def extract(self, record: dict[str, Any]) -> dict[str, Any]:
        """The output record: the input fields plus task, schema, result, spans and errors."""
        text = record.get("text")
        if not isinstance(text, str):
            raise KnowLMError(f"record {record.get('id')!r} has no \"text\" string", 'records look like {"id", "text"}')
        lang = self.lang or detect_lang(text)
        schema = self.schema_for(lang)
        groups = split_groups(self.task, schema)
        result = empty_result(self.task, group_labels(self.task, schema))
        errors: list[dict[str, Any]] = []
        chunks = chunk_spans(text, self.count, self.budget(lang, groups)) if text.strip() else []
        for gi, group in enumerate(groups):  # group-major: consecutive prompts share instruction + schema
            for ci, (start, end) in enumerate(chunks):
                part, problems = self.ask(lang, group, text[start:end])
                merge_into(self.task, result, part)
                for p in problems:
                    errors.append({"chunk": ci, "group": gi, **p})
        spans = locate(self.task, text, result)
        st = self.stats
        st.records += 1
        st.chunks += len(chunks)
        st.spans += len(spans)
        st.hallucinated += sum(s["hallucinated"] for s in spans)
        return {**record, "task": self.task, "schema": schema, "result": result, "spans": spans, "errors": errors}
