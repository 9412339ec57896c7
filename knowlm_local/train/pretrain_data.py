"""Pretraining data: text corpora split into sentences, tokenized and packed into a token store.

This is the data side of continued pretraining as KnowLM-13B was trained:
each document is split into sentences (the project's zh+en splitter,
:func:`knowlm_local.ie.chunk.sentence_spans`), each sentence tokenized on its
own without special tokens, BOS put before a document's first sentence and
EOS after its last, and whole sentences packed greedily into samples of at
most ``max_len`` tokens. A sentence longer than ``max_len`` is cut into
``max_len``-token blocks (its remainder starts the next sample); samples of
``min_len`` new tokens or fewer are dropped; packing runs on across documents
of one input file and restarts at each file, so every file (a *source*) owns
a contiguous sample range that training can reweight. With ``overlap`` > 0
each sample starts with the whole sentences just before it (at most
``overlap`` tokens of them) repeated as context, as KnowLM's samples did.

Inputs are read line by line as bytes and nothing proportional to the corpus
stays in memory but the index (12 bytes a sample) and the 16-byte digests of
exact deduplication. ``.jsonl``: one document a line in ``text_field``.
``.txt``: documents separated by blank lines; a file with no blank line
between text lines at all holds one document per line. A line that is not
UTF-8, not JSON, or without the field is skipped, counted and reported with
file:line. The store format is in :mod:`knowlm_local.train.token_store`.
"""

from __future__ import annotations

import hashlib
import json
import time
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from knowlm_local.errors import KnowLMError
from knowlm_local.train.token_store import TokenWriter, dtype_for

JSONL_EXT = {".jsonl", ".ndjson"}
TEXT_EXT = {".txt", ".text", ".md"}
MAX_REPORTED = 20  # skipped lines listed with file:line
BATCH_CHARS = 1 << 16  # text tokenized per batch call
_PROBE = ["hello world", "hello", "world", " world", "浙江大学位于杭州。", "Knowledge graphs, 2024!"]


@dataclass
class SourceStats:
    """What one input file gave: counts, and its half-open sample range ``[first, end)``."""

    file: str
    layout: str  # "jsonl", "txt-paragraphs" (blank-line separated) or "txt-lines" (one document a line)
    weight: float = 1.0
    first: int = 0
    end: int = 0
    bytes: int = 0
    documents: int = 0  # packed (unique, non-empty)
    duplicates: int = 0
    empty: int = 0
    sentences: int = 0
    cut_sentences: int = 0
    samples: int = 0
    tokens: int = 0  # stored, repeated context included
    dropped_samples: int = 0
    dropped_tokens: int = 0
    repeated_tokens: int = 0
    skipped_lines: int = 0


_COUNTS = ("documents", "duplicates", "empty", "sentences", "cut_sentences", "samples", "tokens",
           "dropped_samples", "dropped_tokens", "repeated_tokens", "skipped_lines")


@dataclass
class PackReport:
    """The counts of one :func:`prepare_pretrain` run (totals over ``sources``)."""

    output: str
    tokenizer: str
    vocab_size: int
    dtype: str
    max_len: int
    min_len: int
    overlap: int
    sources: dict[str, SourceStats] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # the first MAX_REPORTED, as "file:line: reason"
    documents: int = 0
    duplicates: int = 0
    empty: int = 0
    sentences: int = 0
    cut_sentences: int = 0
    samples: int = 0
    tokens: int = 0
    dropped_samples: int = 0
    dropped_tokens: int = 0
    repeated_tokens: int = 0
    skipped_lines: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def total(self) -> None:
        for name in (*_COUNTS, "bytes"):
            setattr(self, name, sum(getattr(s, name) for s in self.sources.values()))

    @property
    def corpus_tokens(self) -> int:
        """Tokens of the corpus itself (sentences + BOS/EOS): stored minus repeats plus dropped."""
        return self.tokens - self.repeated_tokens + self.dropped_tokens

    def lines(self) -> list[str]:
        speed = f", {self.corpus_tokens / self.seconds:,.0f} tokens/s" if self.seconds > 0 else ""
        out = [(f"packed {self.samples:,} samples ({self.tokens:,} tokens, {self.dtype}) into {self.output}"
                f" in {self.seconds:.1f} s{speed}"),
               f"documents: {self.documents:,} ({self.duplicates:,} duplicates and {self.empty:,} empty dropped)",
               f"sentences: {self.sentences:,} ({self.cut_sentences:,} longer than {self.max_len} tokens cut)",
               (f"dropped: {self.dropped_samples:,} samples of <= {self.min_len} tokens "
                f"({self.dropped_tokens:,} tokens)")]
        if self.overlap:
            out.append(f"repeated context: {self.repeated_tokens:,} tokens (overlap {self.overlap})")
        if self.skipped_lines:
            out.append(f"skipped lines: {self.skipped_lines:,}, the first: " + "; ".join(self.skipped[:3]))
        for name, s in self.sources.items():
            out.append(f"source {name} ({s.layout}, weight {s.weight:g}): samples {s.first:,}-{s.end:,}, "
                       f"{s.documents:,} documents")
        return out


# --- packing -------------------------------------------------------------------------------------------


@dataclass
class Packed:
    """One finished sample: its tokens, how many leading ones repeat earlier sentences, kept or dropped."""

    tokens: list[int]
    context: int
    kept: bool


class Packer:
    """Greedy sentence-preserving packing; :meth:`add` takes one sentence's tokens, returns finished samples."""

    def __init__(self, max_len: int, min_len: int = 0, overlap: int = 0) -> None:
        self.max_len, self.min_len, self.overlap = max_len, min_len, overlap
        self.cur: list[int] = []
        self.ctx = 0
        self.cuts = 0
        self._history: deque[list[int]] = deque()  # the last whole sentences, at most `overlap` tokens
        self._history_len = 0

    def add(self, unit: list[int]) -> list[Packed]:
        out: list[Packed] = []
        n = len(unit)
        if n == 0:
            return out
        if n > self.max_len:  # blocks of max_len; the remainder opens the next sample, without context
            self.cuts += 1
            out += self.flush()
            self._history.clear()
            self._history_len = 0
            whole = n - n % self.max_len
            out += [self._close(unit[i:i + self.max_len], 0) for i in range(0, whole, self.max_len)]
            self.cur, self.ctx = unit[whole:], 0
            return out
        if len(self.cur) > self.ctx and len(self.cur) + n <= self.max_len:
            self.cur.extend(unit)
        else:
            out += self.flush()
            context = self._context(self.max_len - n)
            self.cur, self.ctx = context + unit, len(context)
        if self.overlap:
            self._history.append(unit)
            self._history_len += n
            while self._history_len > self.overlap:
                self._history_len -= len(self._history.popleft())
        return out

    def _context(self, room: int) -> list[int]:
        units, total = list(self._history), self._history_len
        while units and total > room:
            total -= len(units.pop(0))
        return [t for u in units for t in u]

    def _close(self, tokens: list[int], context: int) -> Packed:
        return Packed(tokens, context, len(tokens) - context > self.min_len)

    def flush(self) -> list[Packed]:
        """The open sample, if it has new tokens (call at the end of a source)."""
        if len(self.cur) <= self.ctx:
            return []
        done = self._close(self.cur, self.ctx)
        self.cur, self.ctx = [], 0
        return [done]

    def finish(self) -> list[Packed]:
        out = self.flush()
        self._history.clear()
        self._history_len = 0
        return out


def pack(units: Iterable[list[int]], max_len: int, min_len: int = 0, overlap: int = 0) -> Iterator[Packed]:
    """Every sample (kept and dropped) that packing ``units`` (sentences with BOS/EOS attached) gives."""
    packer = Packer(max_len, min_len, overlap)
    for unit in units:
        yield from packer.add(unit)
    yield from packer.finish()


# --- tokenizer ------------------------------------------------------------------------------------------


class SentenceEncoder:
    """Batch tokenization of sentences without special tokens, for an HF tokenizer or any ``encode`` object.

    ``join`` says how sentences are cut from the text: ``"trim"`` (KnowLM's
    way: whitespace between sentences dropped) when the tokenizer gives the
    same tokens for ``"hello world"`` and ``"hello"`` + ``"world"`` (a
    SentencePiece dummy prefix), else ``"keep-space"`` (each sentence keeps
    the whitespace before it, as byte-level BPE needs to see the space).
    """

    def __init__(self, tokenizer, name: str | None = None) -> None:
        self.tok = tokenizer
        self.name = name or str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
        self.bos = getattr(tokenizer, "bos_token_id", None)
        self.eos = getattr(tokenizer, "eos_token_id", None)
        sizes = [getattr(tokenizer, "vocab_size", 0) or 0]
        if hasattr(tokenizer, "__len__"):
            sizes.append(len(tokenizer))
        self.vocab_size = int(max(sizes))
        if self.vocab_size <= 0:
            raise KnowLMError(f"the tokenizer {self.name} reports no vocabulary size", "use a Hugging Face tokenizer")
        self._mode = "hf" if hasattr(tokenizer, "batch_encode_plus") or hasattr(tokenizer, "backend_tokenizer") \
            else "encode"
        probe = self.encode(_PROBE)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if self._mode == "hf" and backend is not None and hasattr(backend, "encode_batch"):
            self._mode = "backend"  # the Rust tokenizer directly: faster, used only when it agrees
            if self.encode(_PROBE) != probe:
                self._mode = "hf"
        self.join = "trim" if probe[0] == probe[1] + probe[2] else (
            "keep-space" if probe[0] == probe[1] + probe[3] else "trim")

    def encode(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        if self._mode == "backend":
            backend = self.tok.backend_tokenizer
            batch = getattr(backend, "encode_batch_fast", None) or backend.encode_batch  # fast: no offsets
            return [e.ids for e in batch(texts, add_special_tokens=False)]
        if self._mode == "hf":
            return list(self.tok(texts, add_special_tokens=False, return_attention_mask=False,
                                 verbose=False)["input_ids"])
        return [list(self.tok.encode(t, add_special_tokens=False)) for t in texts]

    def sentences(self, text: str) -> list[str]:
        from knowlm_local.ie.chunk import sentence_spans

        spans = sentence_spans(text)
        if self.join == "trim":
            return [text[a:b] for a, b in spans]
        return [text[spans[k - 1][1] if k else a:b] for k, (a, b) in enumerate(spans)]


# --- reading inputs -------------------------------------------------------------------------------------


@dataclass
class _Input:
    name: str
    path: Path
    size: int
    layout: str


def _has_blank_separator(path: Path) -> bool:
    """True when a blank line stands between two text lines somewhere in the file."""
    seen_text = gap = False
    with open(path, "rb") as fh:
        for raw in fh:
            if raw.strip():
                if gap:
                    return True
                seen_text = True
            elif seen_text:
                gap = True
    return False


def check_inputs(inputs: list[str]) -> list[_Input]:
    """The inputs as sources, each readable, non-empty, text and of a known kind (else one KnowLMError)."""
    if not inputs:
        raise KnowLMError("no input files given", "pass .txt or .jsonl files, e.g. corpus/*.txt corpus/*.jsonl")
    found: dict[str, _Input] = {}
    for spec in inputs:
        path = Path(spec).expanduser()
        if not path.exists():
            raise KnowLMError(f"no such input file: {path}", "check the path (a shell glob that matched nothing "
                              "stays as written)")
        if path.is_dir():
            raise KnowLMError(f"{path} is a folder", "pass the files in it, e.g. corpus/*.txt corpus/*.jsonl")
        suffix = path.suffix.lower()
        if suffix not in JSONL_EXT | TEXT_EXT:
            raise KnowLMError(f"{path}: unknown input type {suffix or '(no extension)'}",
                              "use .txt (documents separated by blank lines) or .jsonl (one JSON object a line)")
        try:
            size = path.stat().st_size
            with open(path, "rb") as fh:
                head = fh.read(8192)
        except OSError as exc:
            raise KnowLMError(f"cannot read {path}: {exc.strerror}", "check the file's permissions") from None
        if size == 0 or (size <= len(head) and not head.strip()):
            raise KnowLMError(f"{path} is empty", "remove it from the inputs or fill it")
        if b"\x00" in head:
            raise KnowLMError(f"{path} looks like a binary file, not text", "pass UTF-8 .txt or .jsonl files")
        name = path.stem
        if name in found:
            if found[name].path.resolve() == path.resolve():
                continue  # the same file twice (overlapping globs)
            raise KnowLMError(f"two inputs have the source name {name!r}: {found[name].path} and {path}",
                              "a source is named by its file stem: rename one of them")
        layout = "jsonl" if suffix in JSONL_EXT else (
            "txt-paragraphs" if _has_blank_separator(path) else "txt-lines")
        found[name] = _Input(name, path, size, layout)
    return list(found.values())


class _Reader:
    """The documents of one input, read line by line as bytes; ``done`` is the bytes consumed so far."""

    def __init__(self, src: _Input, text_field: str, skip: Callable[[int, str], None]) -> None:
        self.src, self.field, self.skip = src, text_field, skip
        self.done = 0

    def _lines(self) -> Iterator[tuple[int, bytes]]:
        with open(self.src.path, "rb") as fh:
            for no, raw in enumerate(fh, start=1):
                self.done += len(raw)
                if no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                yield no, raw

    def _decode(self, no: int, raw: bytes) -> str | None:
        try:
            return raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            self.skip(no, f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})")
            return None

    def __iter__(self) -> Iterator[str]:
        if self.src.layout == "jsonl":
            yield from self._jsonl()
            return
        paragraphs = self.src.layout == "txt-paragraphs"
        doc: list[str] = []
        for no, raw in self._lines():
            if not raw.strip():
                if doc:
                    yield "\n".join(doc)
                    doc = []
                continue
            text = self._decode(no, raw)
            if text is None:
                continue
            if paragraphs:
                doc.append(text)
            else:
                yield text
        if doc:
            yield "\n".join(doc)

    def _jsonl(self) -> Iterator[str]:
        for no, raw in self._lines():
            if not raw.strip():
                continue
            line = self._decode(no, raw)
            if line is None:
                continue
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as exc:
                self.skip(no, f"not valid JSON ({getattr(exc, 'msg', 'nested too deeply')})")
                continue
            text = obj.get(self.field) if isinstance(obj, dict) else None
            if not isinstance(obj, dict):
                self.skip(no, "not a JSON object")
            elif not isinstance(text, str):
                self.skip(no, f"no string field {self.field!r}")
            else:
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    self.skip(no, "the text holds an unpaired surrogate escape")
                    continue
                yield text


def _digest(text: str) -> bytes:
    """The dedup key: a 16-byte blake2b of the text in NFC with runs of whitespace made one space."""
    norm = " ".join(unicodedata.normalize("NFC", text).split())
    return hashlib.blake2b(norm.encode("utf-8"), digest_size=16).digest()


# --- the run --------------------------------------------------------------------------------------------


def _check_options(max_len: int, min_len: int, overlap: int) -> None:
    if max_len < 2:
        raise KnowLMError(f"--max-len {max_len} is too small", "use the model's context length, e.g. 1024")
    if not 0 <= min_len < max_len:
        raise KnowLMError(f"--min-len {min_len} must be at least 0 and below --max-len {max_len}",
                          "KnowLM dropped samples of 20 tokens or fewer: --min-len 20")
    if not 0 <= overlap < max_len:
        raise KnowLMError(f"--overlap {overlap} must be at least 0 and below --max-len {max_len}",
                          "a few sentences' worth, e.g. --overlap 128 with --max-len 1024, or 0 for none")


def prepare_pretrain(inputs: list[str], output: str, tokenizer, max_len: int = 1024, min_len: int = 20,
                     overlap: int = 0, dedup: bool = True, text_field: str = "text",
                     weights: dict[str, float] | None = None, force: bool = False,
                     say: Callable[[str], None] | None = None,
                     progress: Callable[[int, int], None] | None = None) -> PackReport:
    """Pack ``inputs`` into a token store folder ``output`` (see the module notes); the counts."""
    from knowlm_local.convert.outputs import atomic_dir, check_space

    started = time.monotonic()
    _check_options(max_len, min_len, overlap)
    sources = check_inputs(inputs)
    names = [s.name for s in sources]
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise KnowLMError(f"weights name no input: {', '.join(unknown)}",
                          f"a source is an input file's stem: {', '.join(names)}")
    bad = {k: w for k, w in weights.items() if not (isinstance(w, (int, float)) and w >= 0)}
    if bad:
        raise KnowLMError(f"bad source weights: {bad}", "a weight is a number of 0 or more (1.0: once per epoch)")
    dest = Path(output).expanduser()
    if dest.exists() and (not force or not dest.is_dir()):
        raise KnowLMError(f"{dest} already exists" + ("" if dest.is_dir() else " and is not a folder"),
                          "pass --force to replace it, or choose another output" if dest.is_dir()
                          else "choose another output folder")
    spec = None
    if isinstance(tokenizer, (str, Path)):
        from knowlm_local.train.base import load_tokenizer

        spec, tokenizer = str(tokenizer), load_tokenizer(tokenizer)
    enc = SentenceEncoder(tokenizer, spec)
    dtype = dtype_for(enc.vocab_size)
    total = sum(s.size for s in sources)
    check_space(dest.parent, total * (2 if dtype == "uint16" else 4) // 4, "the token store")
    report = PackReport(str(dest), enc.name, enc.vocab_size, dtype, max_len, min_len, overlap)
    seen: set[bytes] = set()
    with atomic_dir(dest, force=force) as tmp:
        writer = TokenWriter(tmp, dtype)
        try:
            done = 0
            for src in sources:
                stats = report.sources[src.name] = SourceStats(str(src.path), src.layout,
                                                               float(weights.get(src.name, 1.0)))
                _pack_source(src, stats, report, enc, writer, seen if dedup else None, text_field,
                             Packer(max_len, min_len, overlap), lambda n, base=done: progress and progress(base + n, total))
                done += src.size
            report.total()
            if report.samples == 0:
                raise KnowLMError(f"the inputs gave no sample of more than {min_len} tokens",
                                  "check that the files hold text (and --text-field for JSON Lines), "
                                  "or lower --min-len")
            writer.close(_meta(report, enc, dedup, text_field))
        except BaseException:
            writer.abort()
            raise
    report.seconds = time.monotonic() - started
    if progress:
        progress(total, total)
    for line in report.lines() if say else ():
        say(line)
    return report


def _pack_source(src: _Input, stats: SourceStats, report: PackReport, enc: SentenceEncoder, writer: TokenWriter,
                 seen: set[bytes] | None, text_field: str, packer: Packer, progress: Callable[[int], None]) -> None:
    def skip(no: int, reason: str) -> None:
        stats.skipped_lines += 1
        if len(report.skipped) < MAX_REPORTED:
            report.skipped.append(f"{src.path}:{no}: {reason}")

    def take(samples: list[Packed]) -> None:
        for s in samples:
            new = len(s.tokens) - s.context
            if s.kept:
                writer.add(s.tokens)
                stats.samples += 1
                stats.tokens += len(s.tokens)
                stats.repeated_tokens += s.context
            else:
                stats.dropped_samples += 1
                stats.dropped_tokens += new

    def run(batch: list[list[str]]) -> None:
        ids = iter(enc.encode([s for doc in batch for s in doc]))
        for doc in batch:
            units = [next(ids) for _ in doc]
            stats.sentences += len(units)
            if enc.bos is not None:
                units[0] = [enc.bos, *units[0]]
            if enc.eos is not None:
                units[-1] = [*units[-1], enc.eos]
            for unit in units:
                take(packer.add(unit))
        progress(reader.done)

    stats.first = writer.count
    reader = _Reader(src, text_field, skip)
    batch: list[list[str]] = []
    chars = 0
    for text in reader:
        sentences = enc.sentences(text)
        if not sentences:
            stats.empty += 1
            continue
        if seen is not None:
            key = _digest(text)
            if key in seen:
                stats.duplicates += 1
                continue
            seen.add(key)
        stats.documents += 1
        batch.append(sentences)
        chars += len(text)
        if chars >= BATCH_CHARS:
            run(batch)
            batch, chars = [], 0
    run(batch)
    take(packer.finish())
    stats.cut_sentences = packer.cuts
    stats.bytes = src.size
    stats.end = writer.count


def _meta(report: PackReport, enc: SentenceEncoder, dedup: bool, text_field: str) -> dict:
    from knowlm_local import __version__

    counts = {name: getattr(report, name) for name in _COUNTS}
    return {
        "tokenizer": enc.name, "vocab_size": enc.vocab_size, "bos_id": enc.bos, "eos_id": enc.eos,
        "max_len": report.max_len, "min_len": report.min_len, "overlap": report.overlap,
        "dedup": dedup, "text_field": text_field, "sentence_join": enc.join,
        "counts": counts, "skipped": report.skipped,
        "sources": {name: asdict(s) for name, s in report.sources.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "tool": f"knowlm-local {__version__}",
    }
