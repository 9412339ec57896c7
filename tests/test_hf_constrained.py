"""The transformers backend against llama.cpp on one set of weights: greedy answers, schemas, IE, bad flags.

The embedded SmolLM2 is exported to a Hugging Face folder (the ``smollm2_hf_dir``
fixture) and converted back to an F32 GGUF, so both engines hold identical
float32 weights; greedy decoding must then give the same tokens, with and
without a JSON schema (xgrammar here, llama.cpp's grammar there, built from the
same GBNF).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess

import pytest

from knowlm_local.errors import KnowLMError
from knowlm_local.ie.constrain import answer_schema
from knowlm_local.params import GenerationParams
from knowlm_local.runtime import LoadOptions, load_model

pytest.importorskip("xgrammar")

CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
NER = answer_schema("ner", ["person", "location"], max_items=4)
GREEDY = {"temperature": 0.0, "repeat_penalty": 1.0}


@pytest.fixture(scope="module")
def pair(smollm2_hf_dir, tmp_path_factory):
    """(transformers, llama.cpp) on the same float32 weights; one thread each (steadier on a busy machine)."""
    from knowlm_local.convert.pipeline import convert

    gguf = tmp_path_factory.mktemp("smollm2-f32") / "smollm2-f32.gguf"
    convert(str(smollm2_hf_dir), quants="f32", output=gguf)
    hf = load_model(str(smollm2_hf_dir), LoadOptions(backend="hf", n_ctx=1024, n_threads=1))
    lc = load_model(str(gguf), LoadOptions(n_ctx=1024, n_threads=1))
    yield hf, lc
    hf.backend.close()
    lc.backend.close()


@pytest.mark.parametrize("prompt, schema, max_tokens", [
    (CHAT.format("Extract the people: Barack Obama met Angela Merkel in Berlin."), NER, 40),
    (CHAT.format("Extract the people: Barack Obama met Angela Merkel in Berlin."), None, 12),
    ("The capital of France is", None, 12),
    ("The capital of France is", NER, 12),
])
def test_greedy_answers_match_llamacpp(pair, prompt, schema, max_tokens):
    hf, lc = pair
    assert hf.backend.info.name == "transformers" and hf.backend.info.device.startswith("cpu (float32")
    params = GenerationParams(max_tokens=max_tokens, **GREEDY)
    ours, last = hf.backend.complete(prompt, params, json_schema=schema)
    ref, ref_last = lc.backend.complete(prompt, params, json_schema=schema)
    assert ours == ref
    assert last.completion_tokens == ref_last.completion_tokens
    assert last.finish_reason == ref_last.finish_reason
    if schema is not None and last.finish_reason == "stop":
        answer = json.loads(ours)
        assert list(answer) == ["person", "location"] and "Barack Obama" in answer["person"]
    elif schema is None:
        assert not ours.lstrip().startswith("{")  # unconstrained, the model does not write JSON here


def test_grammar_allows_the_schema_and_nothing_else(pair):
    import xgrammar as xgr

    compiled = pair[0].backend.grammar_for(NER)
    assert pair[0].backend.grammar_for(json.loads(json.dumps(NER))) is compiled  # compiled once per schema

    def accepts(text: str) -> bool:
        matcher = xgr.GrammarMatcher(compiled)
        return matcher.accept_string(text) and matcher.is_completed()

    assert accepts('{"person": ["Ada"], "location": []}')
    assert accepts('{ "person" : [ "Ada" , "Bo" ] ,"location" : [ ] }')  # llama.cpp's optional single spaces
    assert not accepts('{"person": ["Ada"]}')  # a required key is missing
    assert not accepts('{"location": [], "person": []}')  # keys out of the schema's order
    assert not accepts('{"person": ["a", "b", "c", "d", "e"], "location": []}')  # maxItems 4
    assert not accepts('{"person": "Ada", "location": []}')
    assert not accepts('{"person": [], "location": [], "date": []}')  # additionalProperties false
    assert not accepts('{"person":  [], "location": []}')  # two spaces: llama.cpp allows one


def test_ie_prompt_answers_parse_and_match_llamacpp(pair):
    from knowlm_local.ie.extract import Extractor
    from knowlm_local.ie.parse import parse_answer

    hf, lc = pair
    group = ["person", "location"]
    text = "Marie Curie was born in Warsaw."
    prompt = Extractor(hf, "ner", group, lang="en").prompt("en", group, text)
    assert prompt == Extractor(lc, "ner", group, lang="en").prompt("en", group, text)  # one prompt for both
    schema = answer_schema("ner", group, max_items=3)  # the schema the IE code passes to every backend
    params = hf.default_params(max_tokens=48, **GREEDY)
    ours, last = hf.backend.complete(prompt, params, json_schema=schema)
    ref, _ = lc.backend.complete(prompt, params, json_schema=schema)
    parsed = parse_answer(ours)
    assert parsed.ok and parsed.clean and last.finish_reason == "stop"
    assert list(parsed.value) == group
    assert ours == ref


def test_cli_extract_on_an_hf_folder_answers_as_llamacpp_does(pair, smollm2_hf_dir, runner, tmp_path):
    from knowlm_local.cli import app

    source = tmp_path / "news.txt"
    source.write_text("Barack Obama met Angela Merkel in Berlin.\n", encoding="utf-8")
    common = ["--task", "ner", "--schema", "person,location", "--threads", "1", "--max-tokens", "48"]
    ours = runner.invoke(app, ["extract", str(source), "-m", str(smollm2_hf_dir), "--backend", "hf", *common])
    assert ours.exit_code == 0, ours.output
    ref = runner.invoke(app, ["extract", str(source), "-m", str(pair[1].resolved.path), "--copy", "off",
                              "--parallel", "1", *common])
    assert ref.exit_code == 0, ref.output
    record, expected = json.loads(ours.stdout.splitlines()[0]), json.loads(ref.stdout.splitlines()[0])
    assert record["errors"] == []  # unconstrained, this model echoes the instruction and nothing parses
    assert record["result"] == expected["result"] and list(record["result"]) == ["person", "location"]


def test_quantized_loading_and_allocate_fail_in_one_line_here(smollm2_hf_dir, embedded_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this checks the CPU-only answers")
    with pytest.raises(KnowLMError) as info:
        load_model(str(smollm2_hf_dir), LoadOptions(backend="hf", load_bits=4))
    if importlib.util.find_spec("bitsandbytes") is None:
        assert "--load-4bit needs bitsandbytes" in info.value.message
        assert info.value.hint == "pip install bitsandbytes"
    else:
        assert "--load-4bit needs a CUDA GPU" in info.value.message
    with pytest.raises(KnowLMError) as info:
        load_model(str(smollm2_hf_dir), LoadOptions(backend="hf", allocate="10,10"))
    assert "no CUDA GPU is visible" in info.value.message
    with pytest.raises(KnowLMError) as info:
        load_model(str(embedded_path), LoadOptions(allocate="10,10"))
    assert "--allocate applies to Hugging Face weights" in info.value.message

    from knowlm_local.cli.options import load_options

    with pytest.raises(KnowLMError, match="both given"):
        load_options("auto", None, None, None, None, None, load_4bit=True, load_8bit=True)
    with pytest.raises(KnowLMError, match="not a list of positive GiB"):
        load_options("auto", None, None, None, None, None, allocate="ten")


def test_cli_refuses_a_70b_folder_on_the_cpu_with_the_numbers(tmp_path, cli_env):
    import torch
    from conftest import knowlm_exe

    if torch.cuda.is_available():
        pytest.skip("with a GPU the folder would be placed there instead")
    folder = tmp_path / "llama-70b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192,
        "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
        "num_key_value_heads": 8, "vocab_size": 32000}))
    (folder / "pytorch_model.bin").write_bytes(b"")  # sized from config.json: no weights are read
    proc = subprocess.run([knowlm_exe(), "chat", "-m", str(folder), "--backend", "hf", "-p", "hi"],
                          capture_output=True, text=True, env=cli_env, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("error: llama-70b in float32 on the CPU needs 257.0 GiB of RAM"), lines
    assert lines[1].startswith("hint: no CUDA GPU is visible: convert it to a GGUF") and len(lines) == 2
    assert "Traceback" not in proc.stderr


@pytest.mark.gpu
def test_cuda_fast_path_matches_llamacpp(smollm2_hf_dir, tmp_path):
    """On a GPU: float32 weights with the static cache (compiled decode) give llama.cpp's greedy answers."""
    from knowlm_local.convert.pipeline import convert

    from knowlm_local.backends.hf import TransformersBackend
    from knowlm_local.backends.llamacpp import LlamaCppBackend

    gguf = tmp_path / "smollm2-f32.gguf"
    convert(str(smollm2_hf_dir), quants="f32", output=gguf)
    hf = TransformersBackend(smollm2_hf_dir, n_ctx=1024, dtype="float32")
    lc = LlamaCppBackend(gguf, n_ctx=1024, n_gpu_layers=-1)
    assert hf.fast and str(hf.device).startswith("cuda")
    prompt = CHAT.format("Extract the people: Barack Obama met Angela Merkel in Berlin.")
    params = GenerationParams(max_tokens=40, **GREEDY)
    for schema in (None, NER):
        ours = hf.complete(prompt, params, json_schema=schema)[0]
        assert ours == lc.complete(prompt, params, json_schema=schema)[0]
    hf.close()
    placed = TransformersBackend(smollm2_hf_dir, n_ctx=1024, allocate="1")  # 1 GiB holds 0.27 GB of bf16
    assert placed.plan.max_memory[0] == "1GiB"
    assert placed.plan.blocks_per_gpu[0] == 32  # embed, 30 layers, head
