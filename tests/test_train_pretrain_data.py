"""Pretraining data preparation: sentence-preserving packing, dedup, bad lines, the token store, mixing.

The corpora are written here (zh + en, multi-sentence documents, a sentence
longer than max_len, duplicates, blank lines, a non-UTF-8 line, broken JSON)
and tokenized with the real SentencePiece tokenizer of the converter tests.
Expected token streams are rebuilt independently from the documents:
sentence_spans, one ``encode`` per sentence, BOS before the first, EOS after
the last.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from convert_fixtures import *  # noqa: F403  (the session fixtures: sp_tokenizer_dir)

from knowlm_local.errors import KnowLMError
from knowlm_local.ie.chunk import sentence_spans
from knowlm_local.train.pretrain_data import SentenceEncoder, pack, prepare_pretrain
from knowlm_local.train.token_store import FORMAT, HEADER, MAGIC, MixedDataset, TokenStore, TokenWriter

MAX = 48
LONG = " ".join(f"knowledge{i % 7} graph{i % 5}" for i in range(60))  # one sentence, far over MAX tokens
EN_DOCS = [
    "The quick brown fox jumps over the lazy dog. Knowledge graphs store entities! Do they store relations?",
    "Zhejiang University is located in Hangzhou.\nIt was founded in 1897; it has many students.",
    "Short one.",
    LONG + ". And a tail sentence after the long one.",
    "Large language models extract events. OneKE answers with JSON objects. In 2023 the team released ZhiXi.",
]
ZH_DOCS = [
    "浙江大学位于杭州。知识图谱由实体和关系组成！大型语言模型能够抽取实体？",
    "今天天气很好；我们去西湖边散步。\n看到了很多游客。",
    "智析是一个面向知识抽取的中英双语大模型。请从下面的句子中抽取三元组：杭州位于浙江省。",
    "第1个例子，数值为37。第2个例子，数值为74。",
]
LINE_DOCS = ["Example 1: the first line. It has two sentences.", "第二行是一个文档。", "Third document here."]


def write_corpus(folder: Path) -> dict:
    """en.txt (blank-line documents), zh.jsonl, lines.txt (one document a line); what each should give."""
    folder.mkdir(parents=True, exist_ok=True)
    en: list[bytes] = []
    bad: list[str] = []
    for k, doc in enumerate(EN_DOCS):
        en += [line.encode() for line in doc.split("\n")]
        if k == 1:  # a non-UTF-8 line inside a document: skipped, the document keeps its other lines
            en.append(b"caf\xe9 latin-1 line")
            bad.append(f"en.txt:{len(en)}: not UTF-8")
        en += [b"", b""] if k % 2 else [b"   "]
    en += [EN_DOCS[0].encode(), b"", ("  " + EN_DOCS[2].replace(" ", "   ") + " ").encode()]  # 2 duplicates
    (folder / "en.txt").write_bytes(b"\n".join(en) + b"\n")
    zh: list[bytes] = []
    for k, doc in enumerate(ZH_DOCS):
        zh.append(json.dumps({"id": k, "text": doc}, ensure_ascii=False).encode())
        if k == 0:
            zh.append(b'{"text": "broken')
            bad.append(f"zh.jsonl:{len(zh)}: not valid JSON")
            zh.append(b"")
            zh.append(b'{"title": "no text field"}')
            bad.append(f"zh.jsonl:{len(zh)}: no string field 'text'")
        if k == 2:
            zh.append('{"text": "坏的行"}'.encode("gbk"))
            bad.append(f"zh.jsonl:{len(zh)}: not UTF-8")
    zh.append(json.dumps({"text": ZH_DOCS[1]}, ensure_ascii=False).encode())  # duplicate within the file
    zh.append(json.dumps({"text": EN_DOCS[4]}).encode())  # duplicate of another file's document
    (folder / "zh.jsonl").write_bytes(b"\n".join(zh) + b"\n")
    (folder / "lines.txt").write_text("\n".join(LINE_DOCS) + "\n", encoding="utf-8")
    return {"en": EN_DOCS, "zh": ZH_DOCS, "lines": LINE_DOCS, "bad": bad, "duplicates": 4,
            "inputs": [str(folder / n) for n in ("en.txt", "zh.jsonl", "lines.txt")]}


def units_of(docs: list[str], tok) -> list[list[int]]:
    """The sentence units of ``docs``: BOS on each document's first sentence, EOS on its last."""
    units = []
    for doc in docs:
        ids = [tok.encode(doc[a:b], add_special_tokens=False) for a, b in sentence_spans(doc)]
        ids[0] = [tok.bos_token_id, *ids[0]]
        ids[-1] = [*ids[-1], tok.eos_token_id]
        units += ids
    return units


def stored(store: TokenStore, name: str) -> list[list[int]]:
    return [store[i].tolist() for i in range(*store.sources[name])]


@pytest.fixture(scope="module")
def tok(sp_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(sp_tokenizer_dir)


@pytest.fixture()
def corpus(tmp_path):
    return write_corpus(tmp_path / "corpus")


@pytest.fixture()
def packed(tmp_path, corpus, tok):
    report = prepare_pretrain(corpus["inputs"], str(tmp_path / "pt"), tok, max_len=MAX, min_len=0)
    return report, TokenStore(tmp_path / "pt")


def test_every_token_once_in_order_and_sentences_whole(packed, corpus, tok):
    report, store = packed
    assert max(store.length(i) for i in range(len(store))) <= MAX
    cut_seen = 0
    for name in ("en", "zh", "lines"):
        units = units_of(corpus[name], tok)
        stream = [t for u in units for t in u]
        samples = stored(store, name)
        assert [t for s in samples for t in s] == stream  # nothing lost, repeated or reordered
        pos, allowed = 0, {0}
        for u in units:  # where a sample may begin: a sentence start, or a max_len block inside a long one
            allowed.update(range(pos, pos + len(u), MAX) if len(u) > MAX else [pos])
            cut_seen += len(u) > MAX
            pos += len(u)
        pos = 0
        unit_len = dict(zip(np.cumsum([0] + [len(u) for u in units[:-1]]).tolist(), map(len, units)))
        for s in samples:
            assert pos in allowed, "a sentence no longer than max_len was cut"
            end = pos + len(s)
            if end in unit_len and unit_len[end] <= MAX:  # greedy: the next sentence did not fit
                assert len(s) + unit_len[end] > MAX
            pos = end
    assert cut_seen == report.cut_sentences == 1
    assert report.sentences == sum(len(sentence_spans(d)) for n in ("en", "zh", "lines") for d in corpus[n])


def test_bos_eos_per_document_and_counts(packed, corpus, tok):
    report, store = packed
    for name in ("en", "zh", "lines"):
        flat = [t for s in stored(store, name) for t in s]
        lengths = [sum(len(tok.encode(d[a:b], add_special_tokens=False)) for a, b in sentence_spans(d)) + 2
                   for d in corpus[name]]
        bos = np.cumsum([0] + lengths[:-1]).tolist()
        assert [i for i, t in enumerate(flat) if t == tok.bos_token_id] == bos
        assert [i for i, t in enumerate(flat) if t == tok.eos_token_id] == [b + n - 1 for b, n in zip(bos, lengths)]
        assert report.sources[name].documents == len(corpus[name])
    assert report.sources["lines"].layout == "txt-lines" and report.sources["en"].layout == "txt-paragraphs"
    assert report.documents == len(EN_DOCS) + len(ZH_DOCS) + len(LINE_DOCS)
    assert report.samples == len(store) and report.tokens == store.num_tokens == report.corpus_tokens
    meta = store.meta
    assert meta["counts"]["documents"] == report.documents and meta["dtype"] == "uint16"
    assert (store.path / "data.bin").stat().st_size == 2 * store.num_tokens


def test_duplicates_and_bad_lines_reported(packed, corpus):
    report, store = packed
    assert report.duplicates == corpus["duplicates"] == store.meta["counts"]["duplicates"]
    assert report.sources["en"].duplicates == 2 and report.sources["zh"].duplicates == 2
    assert report.skipped_lines == len(corpus["bad"])
    for want, got in zip(corpus["bad"], report.skipped, strict=True):  # file:line: reason
        assert f"/{want}" in got, (want, got)
    assert store.meta["skipped"] == report.skipped
    assert any(f"skipped lines: {len(corpus['bad'])}," in line for line in report.lines())


def test_short_samples_dropped_and_counted(tmp_path, corpus, tok):
    min_len = 20
    report = prepare_pretrain(corpus["inputs"], str(tmp_path / "pt"), tok, max_len=MAX, min_len=min_len)
    store = TokenStore(tmp_path / "pt")
    dropped = dropped_tokens = 0
    for name in ("en", "zh", "lines"):
        units = units_of(corpus[name], tok)
        every = list(pack(units, MAX, min_len))
        assert [t for s in every for t in s.tokens] == [t for u in units for t in u]  # kept + dropped = corpus
        assert [s.tokens for s in every if s.kept] == stored(store, name)
        assert all(len(s.tokens) <= min_len for s in every if not s.kept)
        dropped += sum(not s.kept for s in every)
        dropped_tokens += sum(len(s.tokens) for s in every if not s.kept)
    assert report.dropped_samples == dropped >= 2 and report.dropped_tokens == dropped_tokens
    assert min(store.length(i) for i in range(len(store))) > min_len


def test_overlap_repeats_whole_previous_sentences(tmp_path, corpus, tok):
    overlap = 16
    report = prepare_pretrain(corpus["inputs"], str(tmp_path / "pt"), tok, max_len=MAX, min_len=0, overlap=overlap)
    store = TokenStore(tmp_path / "pt")
    repeated = 0
    for name in ("en", "zh", "lines"):
        units = units_of(corpus[name], tok)
        stream = [t for u in units for t in u]
        bounds = np.cumsum([0] + [len(u) for u in units]).tolist()
        p = 0
        for s in stored(store, name):
            assert len(s) <= MAX
            c = 0
            if p in bounds and len(units[bounds.index(p)]) <= MAX:  # a whole sentence starts the new part
                k = bounds.index(p)
                budget = min(overlap, MAX - len(units[k]))
                j = k - 1
                while j >= 0 and len(units[j]) <= MAX and c + len(units[j]) <= budget:
                    c += len(units[j])
                    j -= 1
            assert s == stream[p - c:p - c + len(s)], "the context is not the whole preceding sentences"
            repeated += c
            p = p - c + len(s)
        assert p == len(stream)
    assert report.repeated_tokens == repeated > 0
    assert report.corpus_tokens == report.tokens - repeated


def _units(*lengths: int) -> list[list[int]]:
    out, k = [], 0
    for n in lengths:
        out.append(list(range(k, k + n)))
        k += n
    return out


def test_packer_greedy_cut_and_min_len_exactly():
    a, b, c, d, e, f = _units(4, 4, 3, 25, 2, 3)
    got = [(s.tokens, s.context, s.kept) for s in pack([a, b, c, d, e, f], max_len=10, min_len=3)]
    assert got == [(a + b, 0, True), (c, 0, False),  # 3 tokens <= min_len 3: dropped
                   (d[:10], 0, True), (d[10:20], 0, True), (d[20:] + e + f, 0, True)]


def test_packer_overlap_context_exactly():
    p, q, long, r, s, t1, t2, t3, w = _units(2, 2, 100, 2, 44, 5, 5, 5, 40)
    got = [(x.tokens, x.context) for x in pack([p, q, long, r, s, t1, t2, t3, w], max_len=48, overlap=16)]
    assert got == [
        (p + q, 0), (long[:48], 0), (long[48:96], 0),
        (long[96:] + r, 0),  # a cut sentence's remainder opens a sample without context
        (r + s, 2),  # only whole sentences after the cut: r, not p and q before it
        (t1 + t2 + t3, 0),  # s (44 tokens) is longer than the overlap: no context
        (t3 + w, 5),  # the newest sentences that fit beside w (room 8), not the oldest
    ]


def test_batches_do_not_change_the_result(tmp_path, corpus, tok, monkeypatch):
    from knowlm_local.train import pretrain_data

    prepare_pretrain(corpus["inputs"], str(tmp_path / "one"), tok, max_len=MAX, min_len=5, overlap=8)
    monkeypatch.setattr(pretrain_data, "BATCH_CHARS", 40)
    prepare_pretrain(corpus["inputs"], str(tmp_path / "many"), tok, max_len=MAX, min_len=5, overlap=8)
    one, many = TokenStore(tmp_path / "one"), TokenStore(tmp_path / "many")
    assert len(one) == len(many) and one.sources == many.sources
    assert all(one[i].tolist() == many[i].tolist() for i in range(len(one)))


def test_store_round_trip_and_uint32(tmp_path):
    class WideTokenizer:  # ids above 65,535 need uint32
        bos_token_id, eos_token_id, vocab_size, name_or_path = 1, 2, 70000, "wide"

        def encode(self, text, add_special_tokens=False):
            return [65536 + ord(c) % 4000 for c in text]

    src = tmp_path / "w.txt"
    src.write_text("Hello there, wide world. 第二句话在这里。\n\nAnother document with some words.\n", encoding="utf-8")
    report = prepare_pretrain([str(src)], str(tmp_path / "pt"), WideTokenizer(), max_len=32, min_len=0)
    store = TokenStore(tmp_path / "pt")
    assert report.dtype == store.meta["dtype"] == "uint32" and store.dtype.itemsize == 4
    assert (store.path / "data.bin").stat().st_size == 4 * store.num_tokens
    flat = [t for i in range(len(store)) for t in store[i].tolist()]
    assert max(flat) > 65535 and flat.count(1) == 2 and flat.count(2) == 2
    enc = SentenceEncoder(WideTokenizer())
    assert enc.join == "keep-space"  # a whitespace-sensitive tokenizer keeps the space before each sentence
    text = "One sentence.  Two here!\n第三句。"
    assert "".join(enc.sentences(text)) == text
    with open(store.path / "data.idx", "rb") as fh:
        magic, version, code, samples, tokens = HEADER.unpack(fh.read(HEADER.size))
    assert (magic, version, code, samples, tokens) == (MAGIC, 1, 2, len(store), store.num_tokens)
    assert store[-1].tolist() == store[len(store) - 1].tolist()
    with pytest.raises(IndexError):
        store[len(store)]


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_opening_a_large_store_reads_nothing(tmp_path):
    folder = tmp_path / "big"
    folder.mkdir()
    n, length = 64, 2 << 20  # 64 samples of 2M uint16 tokens: a 256 MB (sparse) data.bin
    with open(folder / "data.idx", "wb") as fh:
        fh.write(HEADER.pack(MAGIC, 1, 1, n, n * length))
        fh.write((np.arange(n, dtype="<u8") * length).tobytes() + np.full(n, length, "<u4").tobytes())
    with open(folder / "data.bin", "wb") as fh:
        fh.truncate(n * length * 2)
    (folder / "meta.json").write_text(json.dumps({"format": FORMAT, "dtype": "uint16", "samples": n,
                                                  "tokens": n * length, "sources": {"big": {"first": 0, "end": n}}}))
    before = _rss()
    store = TokenStore(folder)
    assert len(store) == n and store.view(3).shape == (length,) and int(store.view(3)[:8].sum()) == 0
    assert _rss() - before < 24 << 20  # opened and one sample read: nowhere near 256 MB
    for i in range(24):  # control: touching 24 samples (96 MB of the file) shows up in RSS
        store.view(i).sum()
    assert _rss() - before > 64 << 20


def _toy_store(folder: Path, sizes: dict[str, int], weights: dict[str, float] | None = None) -> TokenStore:
    folder.mkdir(parents=True)
    writer, sources, k = TokenWriter(folder, "uint16"), {}, 0
    for name, count in sizes.items():
        first = writer.count
        for _ in range(count):
            writer.add([k, k + 1, k + 2])  # each sample names itself by its first token
            k += 1
        sources[name] = {"first": first, "end": writer.count, "weight": (weights or {}).get(name, 1.0)}
    writer.close({"sources": sources})
    return TokenStore(folder)


def test_mixed_dataset_weights_and_seed(tmp_path):
    store = _toy_store(tmp_path / "s", {"a": 10, "b": 8}, {"b": 0.5})
    ds = MixedDataset(store, {"a": 2.0}, seed=3)
    firsts = [int(ds[i][0]) for i in range(len(ds))]
    count = Counter(firsts)
    assert len(ds) == 24 and ds.counts == {"a": 20, "b": 4}
    assert all(count[k] == 2 for k in range(10))
    assert len([k for k in range(10, 18) if count[k]]) == 4 and all(count[k] <= 1 for k in range(10, 18))
    again = MixedDataset(store, {"a": 2.0}, seed=3)
    assert [int(again[i][0]) for i in range(len(again))] == firsts
    other = [int(x[0]) for x in MixedDataset(store, {"a": 2.0}, seed=4)]
    assert other != firsts
    assert any(k >= 10 for k in firsts[:12]) and firsts[:20] != list(range(10)) * 2  # interleaved and shuffled
    assert MixedDataset(store, {"b": 0}).counts == {"a": 10, "b": 0}
    second = _toy_store(tmp_path / "t", {"c": 5})
    both = MixedDataset([store, second], seed=1)
    assert both.counts == {"a": 10, "b": 4, "c": 5} and sorted(int(both[i][0]) for i in range(len(both)) if
                                                              both.locate(i)[0] == 1) == list(range(5))
    with pytest.raises(KnowLMError):
        MixedDataset(store, {"nope": 1.0})


def test_prepare_weights_land_in_meta(tmp_path, corpus, tok):
    prepare_pretrain(corpus["inputs"], str(tmp_path / "pt"), tok, max_len=MAX, min_len=0,
                     weights={"zh": 2.0, "lines": 0.5})
    store = TokenStore(tmp_path / "pt")
    assert store.weights == {"en": 1.0, "zh": 2.0, "lines": 0.5}
    n = {name: end - first for name, (first, end) in store.sources.items()}
    assert MixedDataset(store).counts == {"en": n["en"], "zh": 2 * n["zh"], "lines": round(n["lines"] / 2)}
    with pytest.raises(KnowLMError, match="weights name no input"):
        prepare_pretrain(corpus["inputs"], str(tmp_path / "pt2"), tok, weights={"wiki": 1.0})


def test_existing_output_refused_and_failure_leaves_nothing(tmp_path, corpus, tok):
    out = tmp_path / "pt"
    prepare_pretrain(corpus["inputs"], str(out), tok, max_len=MAX, min_len=0)
    with pytest.raises(KnowLMError, match="already exists"):
        prepare_pretrain(corpus["inputs"], str(out), tok, max_len=MAX)
    prepare_pretrain(corpus["inputs"][:1], str(out), tok, max_len=MAX, force=True)
    assert list(TokenStore(out).sources) == ["en"]

    def boom(done, total):
        raise RuntimeError("interrupted midway")

    with pytest.raises(RuntimeError):
        prepare_pretrain(corpus["inputs"], str(tmp_path / "fresh"), tok, max_len=MAX, progress=boom)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "pt"]  # no output, no temp folder


def test_bad_inputs_are_user_errors(tmp_path, corpus, tok):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blob.txt").write_bytes(b"\x00\x01\x02binary")
    (tmp_path / "data.csv").write_text("a,b\n")
    for bad, words in [(tmp_path / "missing.txt", "no such input"), (tmp_path / "empty.txt", "is empty"),
                       (tmp_path / "blob.txt", "binary"), (tmp_path / "data.csv", "unknown input type")]:
        with pytest.raises(KnowLMError, match=words) as exc:
            prepare_pretrain([str(bad)], str(tmp_path / "pt"), tok)
        assert exc.value.hint
    with pytest.raises(KnowLMError, match="min-len"):
        prepare_pretrain(corpus["inputs"], str(tmp_path / "pt"), tok, max_len=16, min_len=16)
    (tmp_path / "damaged").mkdir()
    _toy_store(tmp_path / "damaged" / "s", {"a": 3})
    with open(tmp_path / "damaged" / "s" / "data.bin", "r+b") as fh:
        fh.truncate(4)
    with pytest.raises(KnowLMError, match="incomplete or damaged"):
        TokenStore(tmp_path / "damaged" / "s")
    assert not (tmp_path / "pt").exists()


def test_progress_and_summary(tmp_path, corpus, tok):
    calls, said = [], []
    report = prepare_pretrain(corpus["inputs"], str(tmp_path / "pt"), tok, max_len=MAX,
                              progress=lambda d, t: calls.append((d, t)), say=said.append)
    total = sum(Path(p).stat().st_size for p in corpus["inputs"])
    assert calls[-1] == (total, total) and [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert said == report.lines() and said[0].startswith(f"packed {report.samples:,} samples")
