"""The `knowlm-local instruct` wiring: help with examples, each subcommand calling its library function, and
user errors as error:/hint: lines with exit code 1."""

from __future__ import annotations

import json
import subprocess
import sys

from test_instruct_generate import SEEDS, read_jsonl, write_jsonl
from test_instruct_select import RECORDS
from test_instruct_triples import TEXTS, TRIPLES

from knowlm_local.cli import app

SUBCOMMANDS = ("generate", "evolve", "backtranslate", "select", "from-triples")


def test_instruct_help_lists_the_subcommands_each_with_examples(runner):
    result = runner.invoke(app, ["instruct", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in SUBCOMMANDS:
        assert name in result.stdout
        sub = runner.invoke(app, ["instruct", name, "--help"], env={"COLUMNS": "200"})
        assert sub.exit_code == 0, (name, sub.output)
        assert "Examples" in sub.stdout and f"knowlm-local instruct {name}" in sub.stdout, name


def test_the_cli_imports_neither_torch_nor_llama_cpp():
    code = "import sys, knowlm_local.cli; print('torch' in sys.modules, 'llama_cpp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_select_and_from_triples_through_the_cli(runner, tmp_path):
    data = write_jsonl(tmp_path / "gen.jsonl", RECORDS)
    out = tmp_path / "train.jsonl"
    result = runner.invoke(app, ["instruct", "select", str(data), "--dedup", "--min-len", "3", "--max-len", "12",
                                 "--mtld-min", "8", "--near-dup", "0.7", "--rouge", "0.7", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in read_jsonl(out)] == ["r1", "r4", "r6", "r10"]
    assert "kept 4" in result.output and "dropped: length 2, dedup 1, mtld 1, near-dup 1, rouge 1" in result.output
    again = runner.invoke(app, ["instruct", "select", str(data), "--dedup", "-o", str(out)])
    assert again.exit_code == 1 and "error:" in again.output and "hint:" in again.output and "--force" in again.output

    triples, texts = write_jsonl(tmp_path / "t.jsonl", TRIPLES), write_jsonl(tmp_path / "texts.jsonl", TEXTS)
    ie = tmp_path / "ie.jsonl"
    result = runner.invoke(app, ["instruct", "from-triples", str(triples), str(texts), "-o", str(ie),
                                 "--task", "re"])
    assert result.exit_code == 0, result.output
    assert {r["task"] for r in read_jsonl(ie)} == {"RE"} and "4 matches in 2 texts" in result.output


def test_generate_through_the_cli_on_the_embedded_model_and_a_bad_seed_file(runner, tmp_path):
    seeds = write_jsonl(tmp_path / "seeds.jsonl", SEEDS)
    out = tmp_path / "gen.jsonl"
    result = runner.invoke(app, ["instruct", "generate", "--seed", str(seeds), "-n", "1", "-o", str(out),
                                 "--max-tokens", "64", "--max-tries", "3", "--threads", "1", "--ctx", "1024"])
    assert result.exit_code == 0, result.output
    assert "tried" in result.output and "tiny demo model" in result.output
    for line in out.read_text(encoding="utf-8").splitlines():
        assert json.loads(line)["instruction"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("instruction\toutput\nName a colour.\tblue\n", encoding="utf-8")
    result = runner.invoke(app, ["instruct", "generate", "--seed", str(bad), "-n", "1", "-o", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "error: line 1 of" in result.output and "is not valid JSON" in result.output
    assert "hint:" in result.output and '"instruction"' in result.output
