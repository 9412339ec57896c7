"""No command prints a traceback: each bad input through the real CLI gives one `error:`, one `hint:`, exit 1.

Every case runs the installed `knowlm-local` executable in a subprocess on a
file from tests/bad_inputs.py (or a bad option value). The assertion is the
same for all of them: exit status 1, exactly one line starting with
``error:`` and one with ``hint:`` on stderr, no "Traceback", and not the
catch-all "internal error" message (which would mean a bug slipped through).
"""

from __future__ import annotations

import subprocess

import pytest
from bad_inputs import (
    write_chat_cases,
    write_checkpoint_cases,
    write_gguf_cases,
    write_schema_cases,
    write_text_cases,
)
from conftest import knowlm_exe
from convert_fixtures import *  # noqa: F401,F403  (the session fixtures)

GGUF = ["empty", "two-bytes", "magic-only", "header-only", "cut-30", "cut-1000", "cut-100000", "cut-2000000",
        "cut-last-byte", "random", "magic-random", "version-99", "huge-count", "bad-value-type", "folder",
        "not-gguf"]

CASES: dict[str, list[str]] = {}
for name in GGUF:
    CASES[f"chat-gguf-{name}"] = ["chat", "-m", f"gguf/{name}.gguf", "-p", "hi"]
for name in ("cut-1000", "cut-2000000", "magic-random"):
    CASES[f"extract-gguf-{name}"] = ["extract", "text/good.jsonl", "-m", f"gguf/{name}.gguf"]
    CASES[f"verify-gguf-{name}"] = ["verify", f"gguf/{name}.gguf", "hf/config-invalid"]

NUMERIC = {
    "--ctx": ["0", "-5", "10", "2000000", "abc"], "--max-tokens": ["0", "-1"], "--threads": ["0", "-2", "x"],
    "--temperature": ["-0.1", "1000", "nan-ish"], "--top-p": ["0", "1.5", "-1"], "--top-k": ["-1"],
    "-ngl": ["-2", "99999"], "--repeat-penalty": ["0", "-1"], "--seed": ["-7"],
}
for opt, values in NUMERIC.items():
    for value in values:
        CASES[f"chat{opt}={value}"] = ["chat", opt, value, "-p", "hi"]
for opt, value in [("--chunk-tokens", "0"), ("--chunk-tokens", "-3"), ("--prompt-lookup", "-1"),
                   ("--prompt-lookup", "1000"), ("--ctx", "0"), ("--max-tokens", "0"), ("--temperature", "-1"),
                   ("--threads", "0"), ("-ngl", "-9"), ("--repeat-penalty", "0")]:
    CASES[f"extract{opt}={value}"] = ["extract", "text/good.jsonl", opt, value]
CASES["convert--threads=0"] = ["convert", "hf/config-invalid", "--threads", "0"]
CASES["verify--threads=-1"] = ["verify", "gguf/cut-30.gguf", "--threads", "-1"]

for name in ("empty.txt", "blank.txt", "binary.txt", "gb18030.txt", "utf16.txt", "latin1.jsonl", "empty.jsonl",
             "blank.jsonl", "bad-line-3.jsonl", "array-line.jsonl", "no-text.jsonl", "text-number.jsonl",
             "deep.jsonl", "deep-field.jsonl", "huge.txt", "missing.txt"):
    CASES[f"extract-input-{name}"] = ["extract", f"text/{name}"]
CASES["extract-input-folder"] = ["extract", "text"]
for name in ("empty.json", "bad.json", "bad.yaml", "binary.json", "latin1.json", "number.json", "numbers.json",
             "desc-not-string.json", "deep.json", "deep.yaml", "other-task.json", "missing.json", "folder.json", "bomb.yaml"):
    CASES[f"extract-schema-{name}"] = ["extract", "text/good.jsonl", "--schema-file", f"schema/{name}"]
CASES["extract-schema-int-keys"] = ["extract", "text/good.jsonl", "--task", "ee", "--schema-file",
                                    "schema/int-keys.yaml"]
CASES["extract-schema-ee-args"] = ["extract", "text/good.jsonl", "--task", "ee", "--schema-file",
                                   "schema/ee-args-number.json"]
for i, (opts) in enumerate([
    ["--task", "xyz"], ["--schema", " "], ["--schema", "[1"], ["--task", "ee", "--schema", "acquisition"],
    ["--task", "spo", "--schema", "a/b"], ["--lang", "fr"], ["--format", "xml"], ["--split", "word"],
    ["--input-format", "pdf"], ["-o", "text"], ["-o", "text/good.jsonl"], ["--resume"],
    ["-o", "text/not-extract.jsonl", "--resume"], ["-o", "x.jsonl", "--resume", "--force"],
    ["--schema", "a", "--schema-file", "schema/bad.json"], ["--template", "nope"], ["-m", "no-such-model"],
    ["-m", "./missing.gguf"], ["-m", "hf/no-config"], ["--backend", "tensorflow"],
]):
    CASES[f"extract-opt-{i}-{'_'.join(opts)[:30]}"] = ["extract", "text/good.jsonl", *opts]

SCORE = [("text/missing.jsonl", "text/good.jsonl"), ("text", "text/good.jsonl"), ("text/empty.jsonl", "text/pred.jsonl"),
         ("text/binary.txt", "text/pred.jsonl"), ("text/latin1.jsonl", "text/pred.jsonl"),
         ("text/bad-line-3.jsonl", "text/pred.jsonl"), ("text/array-line.jsonl", "text/pred.jsonl"),
         ("text/deep.jsonl", "text/pred.jsonl"), ("text/pred-unknown-task.jsonl", "text/pred.jsonl"),
         ("text/pred-no-result.jsonl", "text/pred.jsonl"), ("text/pred.jsonl", "text/gold-other-ids.jsonl"),
         ("text/pred.jsonl", "text/gold-bad-label.jsonl"), ("text/pred.jsonl", "text/latin1.jsonl"),
         ("text/pred.jsonl", "text/deep.jsonl"), ("text/pred.jsonl", "text/binary.txt"),
         ("text/pred.jsonl", "text/missing.jsonl")]
for i, (pred, gold) in enumerate(SCORE):
    CASES[f"score-{i}-{pred.split('/')[-1]}-{gold.split('/')[-1]}"] = ["score", pred, gold]
CASES["score-task-unknown"] = ["score", "text/pred.jsonl", "text/pred.jsonl", "--task", "nope"]

HF = ["config-invalid", "config-list", "config-empty", "config-zero-heads", "config-string-layers",
      "config-arch-number", "tokenizer-invalid", "st-truncated", "st-header-len", "st-header-json", "st-header-types",
      "bin-garbage", "no-config", "missing"]
for name in HF:
    CASES[f"convert-{name}"] = ["convert", f"hf/{name}", "-q", "f16", "-o", f"out/{name}.gguf"]
for name in ("config-invalid", "st-header-types", "tokenizer-invalid"):
    CASES[f"merge-{name}"] = ["merge", f"hf/{name}", "--lora", "hf/lora-bad-config", "-o", f"out/merged-{name}"]
for i, opts in enumerate([["-q", "q9_z"], ["-q", ""], ["--lora", "hf/missing"], ["--lora", "hf/lora-bad-config"],
                          ["--imatrix", "hf/imatrix.dat", "-q", "q4_k_m"], ["--imatrix", "gguf/cut-1000.gguf"],
                          ["--imatrix", "hf/missing.dat"], ["-o", "text/good.jsonl"]]):
    CASES[f"convert-opt-{i}"] = ["convert", "hf/good", "-o", "out/good.gguf", *opts]
for i, opts in enumerate([["--shard-size", "huge"], ["--shard-size", "-5GB"], ["--dtype", "int3"],
                          ["--lora", "hf/missing"]]):
    CASES[f"merge-opt-{i}"] = ["merge", "hf/good", "-o", "out/merged", *opts]
CASES["verify-missing-hf"] = ["verify", "gguf/cut-30.gguf", "hf/missing"]
CASES["download-unknown"] = ["download", "no-such-model"]
CASES["download-bad-repo"] = ["download", "a/b/c"]
CASES["download-bad-source"] = ["download", "oneke", "--source", "ftp"]
CASES["download-refused"] = ["download", "someone/model", "--endpoint", "http://127.0.0.1:9"]
CASES["download-not-a-url"] = ["download", "someone/model", "--endpoint", "not a url"]
CASES["rm-unknown"] = ["rm", "no-such-model", "-y"]
CASES["rm-embedded"] = ["rm", "smollm2", "-y"]
CASES["chat-unexpected-arg"] = ["chat", "hello"]
CASES["chat-template"] = ["chat", "--template", "nope", "-p", "hi"]
CASES["chat-backend"] = ["chat", "--backend", "onnx", "-p", "hi"]
CASES["chat-empty-stdin"] = ["chat", "-"]
for i, opts in enumerate([["--config", "no-such-recipe"], ["--config", "schema/bad.yaml"], ["--config", "text/good.jsonl"],
                          ["--config", "smollm2-cpu", "--max-steps", "abc"], ["--config", "smollm2-cpu", "--lora.rank", "8"],
                          ["--config", "smollm2-cpu", "--model", "no-such-model", "--output-dir", "out/r1"],
                          ["--config", "smollm2-cpu", "--data.train", "text/missing.jsonl", "--output-dir", "out/r2"],
                          ["--config", "smollm2-cpu", "--data.train", "text/binary.txt", "--output-dir", "out/r3"],
                          ["--config", "smollm2-cpu", "--resume", "--output-dir", "out/none"],
                          ["--config", "smollm2-cpu", "--mode", "qlora", "--output-dir", "out/r4"],
                          ["--config", "smollm2-cpu", "--precision", "bf16", "--output-dir", "out/r5"],
                          ["--config", "smollm2-cpu", "--learning-rate", "-1"], ["stray"]]):
    CASES[f"finetune-{i}"] = ["finetune", *opts]
CASES["pretrain-no-store"] = ["pretrain", "--config", "smollm2-pretrain-cpu", "--data", "text", "--output-dir", "out/p"]
CASES["pretrain-missing-store"] = ["pretrain", "--config", "smollm2-pretrain-cpu", "--data", "nope", "--output-dir",
                                   "out/p"]
for i, opts in enumerate([["text/missing.txt"], ["text/binary.txt"], ["text/empty.txt"], ["text", "--max-len", "5"],
                          ["text/good.jsonl", "--tokenizer", "no-such-model"], ["text/good.jsonl", "--min-len", "-1"],
                          ["text/good.jsonl", "--weight", "x"]]):
    CASES[f"prepare-pretrain-{i}"] = ["prepare-pretrain", *opts, *(["--tokenizer", "hf/good"] if "--tokenizer" not in opts
                                                                   else []), "-o", f"out/pt{i}"]
for i, opts in enumerate([["text/missing.jsonl"], ["text/binary.txt"], ["text/empty.jsonl"], ["text/good.jsonl",
                          "--format", "xml"], ["text/good.jsonl", "--neg-share", "2"], ["text/good.jsonl", "--task", "xyz"],
                          ["text/good.jsonl", "--labels", "schema/bad.json"], ["text/good.jsonl", "--lang", "fr"]]):
    CASES[f"build-ie-data-{i}"] = ["build-ie-data", *opts, "-o", f"out/ie{i}.jsonl"]
CASES["unknown-command"] = ["frobnicate"]
CASES["unknown-option"] = ["chat", "--frobnicate"]
CASES["missing-argument"] = ["extract"]


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory, embedded_path, tiny_llama_dir):
    root = tmp_path_factory.mktemp("bad")
    write_gguf_cases(root, embedded_path)
    write_text_cases(root)
    write_schema_cases(root)
    write_chat_cases(root)
    write_checkpoint_cases(root, tiny_llama_dir)
    import shutil

    shutil.copytree(tiny_llama_dir, root / "hf" / "good")
    (root / "out").mkdir()
    return root


def run_cli(args: list[str], cwd, env, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([knowlm_exe(), *args], cwd=cwd, env=env, input=stdin, capture_output=True, text=True,
                          timeout=300)


def assert_clean_error(proc: subprocess.CompletedProcess, code: int = 1) -> str:
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    assert "internal error" not in out, out
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    hints = [line for line in proc.stderr.splitlines() if line.startswith("hint:")]
    assert len(errors) == 1 and len(hints) == 1, proc.stderr
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    return errors[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_one_error_line(case, bad_root, cli_env):
    proc = run_cli(CASES[case], bad_root, {**cli_env, "HF_HUB_OFFLINE": "0", "COLUMNS": "80"})
    line = assert_clean_error(proc)
    if "truncated" in case or case.startswith(("chat-gguf-cut", "extract-gguf-cut")):
        assert "truncated at byte" in line


def test_truncated_gguf_names_the_byte(bad_root, cli_env):
    proc = run_cli(["chat", "-m", "gguf/cut-100000.gguf", "-p", "hi"], bad_root, cli_env)
    assert "truncated at byte 100000" in assert_clean_error(proc)


@pytest.mark.parametrize("name", ["not-json", "list", "bad-messages", "bad-param", "bad-range", "latin1", "deep",
                                  "missing"])
def test_chat_load_of_a_bad_file_keeps_the_session(name, bad_root, cli_env):
    """/load of a damaged file: one error line inside the REPL, which then goes on (exit 0 at /bye)."""
    script = f"/load chat/{name}.json\n/set temperature 0\n/bye\n"
    proc = run_cli(["chat", "--max-tokens", "4"], bad_root, cli_env, stdin=script)
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and "internal error" not in out, out
    assert proc.returncode == 0, out
    assert sum(line.startswith("error:") for line in proc.stderr.splitlines()) == 1, proc.stderr
    assert "temperature = 0.0" in proc.stderr  # the REPL kept going after the error


@pytest.mark.parametrize("status,body", [(200, b"<html>a captive portal, not a hub</html>"), (500, b"oops"),
                                         (200, b'{"id": 5, "siblings": "many"}')])
def test_download_from_a_server_that_is_not_a_hub(status, body, tmp_path, cli_env):
    """A mirror URL that answers garbage (a login page, a 500, JSON of the wrong shape): one clean error."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Garbage(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(status)
            self.send_header("Content-Type", "text/html" if body.startswith(b"<") else "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_GET  # noqa: N815

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Garbage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        proc = run_cli(["download", "someone/model", "--endpoint", url], tmp_path,
                       {**cli_env, "HF_HUB_OFFLINE": "0", "HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "5"})
        assert "someone/model" in assert_clean_error(proc)
    finally:
        server.shutdown()
