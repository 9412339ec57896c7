"""Quantization through libllama: every type from one read of the source, importance matrices, the store."""

from __future__ import annotations

import io
import json

import numpy as np
from convert_fixtures import *  # noqa: F401,F403  (the session fixtures)
from convert_fixtures import install_in_hf_cache
from knowlm_local.convert.pipeline import convert
from knowlm_local.convert.quantize import quantize, read_imatrix
from knowlm_local.convert.tensors import Checkpoint

QUANTS = ("q4_0", "q4_k_s", "q4_k_m", "q5_k_m", "q6_k", "q8_0")
FILE_TYPES = {"q4_0": 2, "q4_k_s": 14, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18, "q8_0": 7}


def _reader(path):
    from gguf import GGUFReader

    return GGUFReader(str(path))


def _generate(path, prompt="Hello", n=6) -> int:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=64, verbose=False, n_threads=1, n_threads_batch=1, seed=0
    )
    try:
        out = llm.create_completion(prompt, max_tokens=n, temperature=0.0)
        return out["usage"]["completion_tokens"]
    finally:
        llm.close()


def test_six_quant_types_from_one_read_of_the_source(tiny_llama_dir, tmp_path, monkeypatch):
    opened: list[str] = []
    original = Checkpoint.open

    def counting_open(self, name):
        opened.append(name)
        return original(self, name)

    monkeypatch.setattr(Checkpoint, "open", counting_open)
    result = convert(str(tiny_llama_dir), quants=",".join(QUANTS), output=tmp_path / "out")
    assert sorted(opened) == sorted(Checkpoint(tiny_llama_dir).names)  # each tensor read exactly once
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == sorted([f"{tiny_llama_dir.name}-{q}.gguf" for q in QUANTS] + ["provenance.json"])
    records = json.loads(result.provenance.read_text())["files"]
    for quant, path in result.outputs.items():
        reader = _reader(path)
        assert reader.fields["general.file_type"].contents() == FILE_TYPES[quant]
        assert records[path.name]["quant"] == quant and records[path.name]["intermediate"] == "f16"
        assert _generate(path) > 0, quant
    types = {t.name: t.tensor_type.name for t in _reader(result.outputs["q4_k_m"]).tensors}
    assert types["blk.0.attn_q.weight"] == "Q4_K" and types["blk.0.attn_norm.weight"] == "F32"


def _write_gguf_imatrix(path, tensors: dict[str, np.ndarray], counts: float) -> None:
    import gguf

    writer = gguf.GGUFWriter(path, "imatrix")
    writer.add_type("imatrix")
    writer.add_array("imatrix.datasets", ["test"])
    writer.add_uint32("imatrix.chunk_count", 4)
    writer.add_uint32("imatrix.chunk_size", 512)
    for name, values in tensors.items():
        writer.add_tensor(f"{name}.in_sum2", (values * counts).astype(np.float32).reshape(1, -1))
        writer.add_tensor(f"{name}.counts", np.array([[counts]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _write_legacy_imatrix(path, tensors: dict[str, np.ndarray], ncall: int) -> None:
    import struct

    with open(path, "wb") as fh:
        fh.write(struct.pack("<i", len(tensors)))
        for name, values in tensors.items():
            raw = name.encode()
            fh.write(struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, values.size))
            fh.write((values * ncall).astype("<f4").tobytes())
        fh.write(struct.pack("<i", 4) + struct.pack("<i", 4) + b"test")


def test_importance_matrix_in_both_formats_changes_the_quantization(tiny_llama_dir, tmp_path):
    f16 = convert(str(tiny_llama_dir), quants="f16", output=tmp_path / "tiny-f16.gguf").outputs["f16"]
    rng = np.random.default_rng(0)
    weights = {
        t.name: int(t.shape[0])
        for t in _reader(f16).tensors
        if len(t.shape) == 2 and "token_embd" not in t.name
    }
    # A very uneven importance: the quantizer must spend its precision on a few columns.
    values = {name: (rng.random(cols) ** 8 * 100 + 1e-3).astype(np.float32) for name, cols in weights.items()}
    _write_gguf_imatrix(tmp_path / "m.imatrix", values, counts=7.0)
    _write_legacy_imatrix(tmp_path / "m.dat", values, ncall=5)
    for path in (tmp_path / "m.imatrix", tmp_path / "m.dat"):
        loaded = read_imatrix(path)
        assert set(loaded) == set(values)
        assert max(float(np.abs(loaded[k] - values[k]).max() / values[k].max()) for k in values) < 1e-5
    quantize(f16, tmp_path / "plain.gguf", "q4_k_m")
    quantize(f16, tmp_path / "gguf-im.gguf", "q4_k_m", read_imatrix(tmp_path / "m.imatrix"))
    quantize(f16, tmp_path / "legacy-im.gguf", "q4_k_m", read_imatrix(tmp_path / "m.dat"))
    data = {
        n: {t.name: bytes(t.data) for t in _reader(tmp_path / n).tensors}
        for n in ("plain.gguf", "gguf-im.gguf", "legacy-im.gguf")
    }
    name = "blk.0.attn_q.weight"
    assert data["gguf-im.gguf"][name] != data["plain.gguf"][name]
    assert data["gguf-im.gguf"][name] == data["legacy-im.gguf"][name]  # same matrix, two file formats
    assert _generate(tmp_path / "gguf-im.gguf") > 0


def test_convert_verify_then_the_quantized_smollm2_still_answers(smollm2_hf_dir, tmp_path):
    from knowlm_local.chat import ChatSession, one_shot
    from knowlm_local.runtime import LoadOptions, load_model

    result = convert(
        str(smollm2_hf_dir), quants="q4_k_m", verify=True, threads=1, output=tmp_path / "smol.gguf"
    )
    q4 = result.outputs["q4_k_m"]
    inter, final = result.verify  # the F16 intermediate is judged strictly, then the Q4_K_M file
    assert inter.quant == "f16" and inter.passed and final.quant == "q4_k_m" and final.passed, final.line()
    record = json.loads(result.provenance.read_text())["files"]["smol.gguf"]
    assert record["verify"]["passed"] and record["intermediate"] == "f16"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "provenance.json",
        "smol.gguf",
    ]  # intermediate removed
    loaded = load_model(str(q4), LoadOptions(n_ctx=512, n_threads=1, seed=0))
    try:
        session = ChatSession(loaded, loaded.default_params(temperature=0.0, max_tokens=12))
        out = io.StringIO()
        one_shot(session, "What is the capital of France? Answer with one word.", out)
        assert "Paris" in out.getvalue()
    finally:
        loaded.backend.close()


def test_store_results_are_found_by_name_and_chat(tiny_llama_dir, runner):
    from knowlm_local.cli import app
    from knowlm_local.store import model_dir, resolve

    install_in_hf_cache(tiny_llama_dir, "someone/tiny-llama")
    result = convert("someone/tiny-llama", quants="f16,q8_0")
    folder = model_dir("someone/tiny-llama")
    assert result.outputs == {
        "f16": folder / "someone--tiny-llama-f16.gguf",
        "q8_0": folder / "someone--tiny-llama-q8_0.gguf",
    }
    assert resolve("someone/tiny-llama:q8_0").path == result.outputs["q8_0"]
    assert resolve("someone/tiny-llama").path == result.outputs["q8_0"]  # the store's preference order
    record = json.loads((folder / "provenance.json").read_text())["files"]["someone--tiny-llama-f16.gguf"]
    assert record["source"]["repo"] == "someone/tiny-llama" and record["intermediate"] is None
    assert record["tool"]["knowlm-local"] and record["created"]
    chat = runner.invoke(
        app,
        [
            "chat",
            "-m",
            "someone/tiny-llama:f16",
            "-p",
            "hello",
            "--template",
            "raw",
            "--max-tokens",
            "4",
            "--temperature",
            "0",
            "--threads",
            "1",
        ],
    )
    assert chat.exit_code == 0, chat.output
