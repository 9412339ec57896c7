"""The built-in extraction model: its data (held out, rebuilt byte for byte), its base export (tokenizer equal to
the GGUF's), the shipped adapter (loads, parses, beats the bare model), the defaults, and the whole pipeline."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from knowlm_local.ie.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "recipes" / "data" / "tinyie"
SAMPLE = ["The price rose 12 % to 1,234.50 in 2024.", "x  12", "a\t\t 7", "  leading and   inner   spaces 99",
          "陈思远于2015年在成都创立了云杉科技。", "第3季度营收为45.6亿元，同比增长12%。", "Mixed 中英文 text 123abc 4 5",
          "emoji 🐋 and full-width ＡＢＣ　１２３", "line\nbreaks\n\n2 3", "tabs\tand 0007 zeros"]


@pytest.fixture(scope="session")
def embedded_export(tmp_path_factory):
    """The embedded model exported once for the session (25 s), in a store of its own."""
    from knowlm_local.train.base import export_embedded

    old = os.environ.get("KNOWLM_HOME")
    os.environ["KNOWLM_HOME"] = str(tmp_path_factory.mktemp("export-home"))
    try:
        return export_embedded()
    finally:
        if old is None:
            os.environ.pop("KNOWLM_HOME", None)
        else:
            os.environ["KNOWLM_HOME"] = old


def test_the_export_tokenizes_exactly_like_the_gguf(embedded_export, embedded_path, tmp_path):
    import shutil

    import llama_cpp
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(embedded_export)
    llm = llama_cpp.Llama(model_path=str(embedded_path), vocab_only=True, verbose=False)
    try:
        for text in SAMPLE:
            want = list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))
            assert hf(text, add_special_tokens=False)["input_ids"] == want, text
        broken = tmp_path / "broken"  # the export as transformers writes it, without the repair
        shutil.copytree(embedded_export, broken, ignore=shutil.ignore_patterns("*.safetensors"))
        data = json.loads((broken / "tokenizer.json").read_text(encoding="utf-8"))
        data["pre_tokenizer"] = data["pre_tokenizer"]["pretokenizers"][1]
        (broken / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
        unfixed = AutoTokenizer.from_pretrained(broken)
        differs = [t for t in SAMPLE if unfixed(t, add_special_tokens=False)["input_ids"]
                   != list(llm.tokenize(t.encode("utf-8"), add_bos=False, special=False))]
        assert "x  12" in differs  # what the repair is for
    finally:
        llm.close()


def test_the_data_is_held_out_labelled_as_extract_asks_and_rebuilds_byte_for_byte(tmp_path):
    from knowlm_local.train.iedata import build_ie_data

    for lang in ("zh", "en"):
        labels = json.loads((DATA / f"labels.{lang}.json").read_text(encoding="utf-8"))
        assert labels == {"NER": get_task("NER").default_schema[lang], "RE": get_task("RE").default_schema[lang]}
        train = [json.loads(x) for x in (DATA / f"train.{lang}.jsonl").read_text(encoding="utf-8").splitlines()]
        dev = [json.loads(x) for x in (DATA / f"dev.{lang}.jsonl").read_text(encoding="utf-8").splitlines()]
        assert len(train) >= 300 and len(dev) >= 60
        assert not {r["text"] for r in train} & {r["text"] for r in dev}
        for split in ("train", "dev"):
            out = tmp_path / f"{split}.ie.{lang}.jsonl"
            build_ie_data([str(DATA / f"{split}.{lang}.jsonl")], str(out), tasks=["NER", "RE"], lang=lang,
                          labels=labels, shuffle=False)
            assert out.read_bytes() == (DATA / f"{split}.ie.{lang}.jsonl").read_bytes(), (split, lang)


def _f1(task, records, results):
    from knowlm_local.ie.score import Tally, gold_tuples, result_tuples

    tally = Tally()
    for rec, res in zip(records, results, strict=True):
        tally.add(gold_tuples(task, rec)["tuple"], result_tuples(task, res)["tuple"])
    return tally.report()["overall"]["f1"]


def test_the_shipped_adapter_parses_and_beats_the_bare_model_on_held_out_records():
    from knowlm_local.ie.extract import Extractor
    from knowlm_local.ie.run import load_for_extract
    from knowlm_local.runtime import LoadOptions

    records = []
    for lang in ("zh", "en"):
        records += [json.loads(x) for x in (DATA / f"dev.{lang}.jsonl").read_text(encoding="utf-8").splitlines()][:14]
    scores = {}
    for name in ("smollm2", "smollm2-ie"):
        loaded, _ = load_for_extract(name, LoadOptions(n_ctx=1024, seed=0, n_threads=2))
        try:
            ex = Extractor(loaded, "ner", copy="strict",
                           params=loaded.default_params(temperature=0.0, repeat_penalty=1.0, max_tokens=160))
            results = [ex.extract({"id": r["id"], "text": r["text"]})["result"] for r in records]
            assert ex.stats.unparseable == 0 and ex.stats.hallucinated == 0
            scores[name] = _f1("NER", records, results)
        finally:
            loaded.backend.close()
    assert scores["smollm2-ie"] >= scores["smollm2"] + 0.2, scores


def test_extract_uses_the_builtin_ie_model_chat_the_plain_one_and_a_newer_conversion_wins(tmp_path):
    from knowlm_local.store import default_model, home

    assert default_model("extract").name == "smollm2-ie" and default_model("extract").adapter is not None
    assert default_model("chat").name == "smollm2-135m-instruct" and default_model("chat").adapter is None
    newer = home() / "models" / "mine" / "mine-q8_0.gguf"
    newer.parent.mkdir(parents=True)
    newer.write_bytes(b"GGUF")  # only its age matters here
    assert default_model("extract").name == "mine:q8_0"
    os.utime(newer, (1, 1))  # older than the shipped adapter: the built-in model again
    assert default_model("extract").name == "smollm2-ie"


def test_cli_extract_says_which_model_and_models_lists_it(cli_env, tmp_path):
    from conftest import knowlm_exe

    src = tmp_path / "in.txt"
    src.write_text("Marta Oliveira founded Tidewater Analytics in Porto in 2016.\n")
    out = subprocess.run([knowlm_exe(), "extract", str(src), "--ctx", "1024"], env=cli_env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "built-in extraction model" in out.stderr
    rec = json.loads(out.stdout.splitlines()[-1])
    assert rec["spans"] and not any(s["hallucinated"] for s in rec["spans"])
    listed = json.loads(subprocess.run([knowlm_exe(), "models", "--json"], env=cli_env, capture_output=True,
                                       text=True, timeout=120, check=True).stdout)
    [card] = [c for c in listed["zoo"] if c["name"] == "smollm2-ie"]
    assert card["adapter"] == "smollm2-ie-lora.gguf" and card["installed"] and "F1" in card["measured"]


@pytest.mark.slow
def test_train_merge_convert_extract_score_pipeline(tmp_path, cli_env, embedded_export):
    """The recipe's code path end to end on a few dozen records: train, merge + convert, extract, score."""
    from conftest import knowlm_exe

    from knowlm_local.store import model_dir

    home = tmp_path / "home"
    env = {**cli_env, "KNOWLM_HOME": str(home)}
    link = home / "models" / model_dir("smollm2-135m-instruct").name / "hf"
    link.parent.mkdir(parents=True)
    link.symlink_to(embedded_export)
    run = tmp_path / "run"
    train = subprocess.run([knowlm_exe(), "finetune", "--config", "smollm2-ie-cpu", "--output-dir", str(run),
                            "--max-steps", "12", "--save-steps", "100", "--data.max-len", "384"],
                           env=env, capture_output=True, text=True, timeout=3600)
    assert train.returncode == 0, train.stderr[-3000:]
    gguf = tmp_path / "mine-f16.gguf"
    conv = subprocess.run([knowlm_exe(), "convert", str(run), "-q", "f16", "-o", str(gguf)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert conv.returncode == 0, conv.stderr[-3000:]
    adapter = subprocess.run([knowlm_exe(), "convert", str(run), "--adapter-only", "-o", str(tmp_path / "a.gguf")],
                             env=env, capture_output=True, text=True, timeout=900)
    assert adapter.returncode == 0 and (tmp_path / "a.gguf").stat().st_size < 5_000_000, adapter.stderr[-2000:]
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join((DATA / "dev.en.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:24]))
    out = tmp_path / "out.jsonl"
    ext = subprocess.run([knowlm_exe(), "extract", str(dev), "-m", str(gguf), "-o", str(out), "--ctx", "1024"],
                         env=env, capture_output=True, text=True, timeout=1800)
    assert ext.returncode == 0, ext.stderr[-2000:]
    scored = subprocess.run([knowlm_exe(), "score", str(out), str(dev), "--json"], env=env, capture_output=True,
                            text=True, timeout=300)
    assert scored.returncode == 0, scored.stderr
    scores = json.loads(scored.stdout)
    assert scores["records"] == 24 and scores["unparseable"] == 0
