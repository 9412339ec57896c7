"""Bad input and failures: clear errors, nothing half-written, legacy formats, ZhiXi diffs, the CLI."""

from __future__ import annotations

import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from convert_fixtures import *  # noqa: F401,F403  (the session fixtures)
from convert_fixtures import build_tiny_llama, gguf_logits, hf_logits, make_lora
from knowlm_local.convert.merge import merge
from knowlm_local.convert.pipeline import convert
from test_convert_writer import PROMPT_IDS, rel_error

from knowlm_local.errors import KnowLMError


class Payload:
    """A class a pickle would have to import and construct: exactly what weights_only refuses."""

    def __reduce__(self):
        return (os.getcwd, ())


def _copy(src, dst, skip=()):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*skip))
    return dst


def _tensor_bytes(path) -> dict[str, bytes]:
    from gguf import GGUFReader

    return {t.name: bytes(t.data) for t in GGUFReader(str(path)).tensors}


def test_unsupported_architecture_names_the_supported_ones(tiny_llama_dir, tmp_path):
    folder = _copy(tiny_llama_dir, tmp_path / "qwen")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"], cfg["model_type"] = ["Qwen2ForCausalLM"], "qwen2"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(KnowLMError, match="Qwen2ForCausalLM model; the converter supports LlamaForCausalLM"):
        convert(str(folder), quants="f16", output=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_tokenizer_files(tiny_llama_dir, tmp_path):
    folder = _copy(tiny_llama_dir, tmp_path / "no-tok", skip=("tokenizer*",))
    with pytest.raises(KnowLMError, match="no tokenizer: neither tokenizer.model") as err:
        convert(str(folder), quants="f16", output=tmp_path / "out")
    assert "download the tokenizer files" in err.value.hint


def test_existing_output_needs_force(tiny_llama_dir, tmp_path):
    out = tmp_path / "model.gguf"
    convert(str(tiny_llama_dir), quants="f16", output=out)
    before = out.stat().st_mtime_ns
    with pytest.raises(KnowLMError, match="already exists") as err:
        convert(str(tiny_llama_dir), quants="f16", output=out)
    assert "--force" in err.value.hint and out.stat().st_mtime_ns == before
    convert(str(tiny_llama_dir), quants="f16", output=out, force=True)
    assert out.stat().st_mtime_ns != before


def _save_bin_shards(model_dir, out, dtype=None):
    """The model as two legacy pytorch_model-*.bin shards with an index, as KnowLM/OneKE ship it."""
    import torch
    from safetensors.torch import load_file

    _copy(model_dir, out, skip=("*.safetensors",))
    state = load_file(model_dir / "model.safetensors")
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    names = sorted(state)
    shards = {
        "pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
        "pytorch_model-00002-of-00002.bin": names[len(names) // 2 :],
    }
    for fname, keys in shards.items():
        torch.save({k: state[k] for k in keys}, out / fname)
    index = {"weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (out / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return out


def test_legacy_bin_shards_convert_like_safetensors(tiny_llama_dir, tmp_path):
    folder = _save_bin_shards(tiny_llama_dir, tmp_path / "bin")
    from_bin = convert(str(folder), quants="f16", output=tmp_path / "bin.gguf").outputs["f16"]
    from_st = convert(str(tiny_llama_dir), quants="f16", output=tmp_path / "st.gguf").outputs["f16"]
    assert _tensor_bytes(from_bin) == _tensor_bytes(from_st)


def test_pickle_needing_more_than_tensors_is_refused(tiny_llama_dir, tmp_path):
    import torch

    folder = _copy(tiny_llama_dir, tmp_path / "evil", skip=("*.safetensors",))
    torch.save(
        {"model.embed_tokens.weight": torch.zeros(2, 2), "extra": Payload()}, folder / "pytorch_model.bin"
    )
    with pytest.raises(KnowLMError, match="refusing to load pytorch_model.bin.*run code") as err:
        convert(str(folder), quants="f16", output=tmp_path / "out")
    assert "safetensors" in err.value.hint
    assert pickle.loads(pickle.dumps(Payload())) == os.getcwd()  # the payload really does run code
    assert not (tmp_path / "out").exists()


def test_truncated_weights_are_reported_before_writing(tiny_llama_dir, tmp_path):
    folder = _copy(tiny_llama_dir, tmp_path / "cut")
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)
    with pytest.raises(KnowLMError, match="truncated"):
        convert(str(folder), quants="q4_k_m,q8_0", output=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG, as on a full disk, instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000))


def test_disk_full_leaves_nothing_behind(tiny_llama_dir, tmp_path, cli_env):
    """The real CLI in a child process that may not write more than 2 MB (the model needs ~10 MB)."""
    from conftest import knowlm_exe

    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(
        [knowlm_exe(), "convert", str(tiny_llama_dir), "-q", "f32,q4_k_m", "-o", str(out)],
        capture_output=True,
        text=True,
        env=cli_env,
        preexec_fn=_limit_file_size,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert "error: the disk filled up while writing" in proc.stderr and "hint:" in proc.stderr
    assert list(out.iterdir()) == []


def test_check_space_refuses_before_writing(tmp_path):
    from knowlm_local.convert.outputs import check_space

    from knowlm_local.io_utils import free_bytes

    with pytest.raises(KnowLMError, match="not enough disk space"):
        check_space(tmp_path, free_bytes(tmp_path) + 10**12, "a model")


def _diff_fixture(sp_tokenizer_dir, tmp_path):
    """LLaMA stand-in (fp16 .bin with 2023-style rotary inv_freq) + a tuned model + their fp32 diff."""
    import torch
    from safetensors.torch import load_file

    base = build_tiny_llama(tmp_path / "llama", sp_tokenizer_dir, seed=10, dtype=torch.float16)
    tuned = build_tiny_llama(tmp_path / "tuned", sp_tokenizer_dir, seed=11)
    base_sd, tuned_sd = load_file(base / "model.safetensors"), load_file(tuned / "model.safetensors")
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 64, 2, dtype=torch.float32) / 64))
    diff = _copy(tuned, tmp_path / "zhixi-13b-diff", skip=("*.safetensors",))
    diff_sd = {k: tuned_sd[k] - base_sd[k].float() for k in tuned_sd}
    for i in range(2):
        base_sd[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv_freq.half()
        diff_sd[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = torch.zeros(32)
    (base / "model.safetensors").unlink()
    torch.save(base_sd, base / "pytorch_model.bin")
    torch.save(diff_sd, diff / "pytorch_model.bin")
    # KnowLM's check: sum of every recovered tensor (fp32 state dict, load order), accumulated in float32.
    recovered = {k: diff_sd[k] + base_sd[k].float() for k in diff_sd}
    order = sorted(
        recovered,
        key=lambda k: (
            not k.startswith("model.embed"),
            k.startswith("lm_head"),
            k.startswith("model.norm"),
            k,
        ),
    )
    expected = float(sum(recovered[k].sum() for k in order))
    return base, tuned, diff, expected


def test_zhixi_diff_recovery_with_the_checksum(sp_tokenizer_dir, tmp_path):
    from safetensors.torch import load_file

    base, tuned, diff, expected = _diff_fixture(sp_tokenizer_dir, tmp_path)
    with pytest.raises(KnowLMError, match="fail KnowLM's integrity check") as err:
        convert(str(diff), quants="f32", diff_base=base, output=tmp_path / "out")  # KnowLM's own constant
    assert "94052.2891" in err.value.message and not (tmp_path / "out").exists()
    result = convert(str(diff), quants="f32", diff_base=base, output=tmp_path / "out", expected_sum=expected)
    assert result.name == "zhixi-13b"  # "-diff" dropped from the name
    assert rel_error(gguf_logits(result.outputs["f32"], PROMPT_IDS), hf_logits(tuned, PROMPT_IDS)) < 0.005
    record = json.loads(result.provenance.read_text())["files"]["zhixi-13b-f32.gguf"]
    assert record["diff"]["checksum"]["checked"] and abs(record["diff"]["checksum"]["sum"] - expected) < 1e-2
    merged = merge(
        str(diff), diff_base=base, output=tmp_path / "recovered", dtype="f32", expected_sum=expected
    )
    ours, want = load_file(merged.folder / "model.safetensors"), load_file(tuned / "model.safetensors")
    assert set(ours) == set(want)
    assert max(float((ours[k] - want[k]).abs().max()) for k in want) < 1e-6


def test_diff_shard_with_a_wrong_md5_is_refused(tmp_path):
    from knowlm_local.convert.diff_weights import md5_check

    shard = tmp_path / "pytorch_model-00001-of-00006.bin"  # a name KnowLM published an MD5 for
    shard.write_bytes(b"not the real shard")
    other = tmp_path / "pytorch_model-00001-of-00009.bin"
    other.write_bytes(b"unknown name: not checked")
    with pytest.raises(KnowLMError, match="has MD5 .* KnowLM published 83cc5089df3eb400c99d9947b8c4f97b"):
        md5_check([shard, other])
    assert md5_check([other]) == {}


def test_cli_convert_merge_and_verify(tiny_llama_dir, smollm2_hf_dir, smollm2_f16, tmp_path, runner):
    from knowlm_local.cli import app

    converted = runner.invoke(app, ["convert", str(tiny_llama_dir), "-q", "f16", "-o", str(tmp_path / "g")])
    assert converted.exit_code == 0, converted.output
    gguf = tmp_path / "g" / f"{tiny_llama_dir.name}-f16.gguf"
    assert gguf.is_file() and converted.stdout.strip() == str(gguf)
    assert f"use it with `knowlm-local chat -m {gguf}`" in converted.output
    adapter = make_lora(tiny_llama_dir, tmp_path / "adapter")
    result = runner.invoke(
        app,
        [
            "merge",
            str(tiny_llama_dir),
            "--lora",
            str(adapter),
            "-o",
            str(tmp_path / "m"),
            "--dtype",
            "float32",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (
        result.stdout.strip().endswith(str(tmp_path / "m"))
        and (tmp_path / "m" / "model.safetensors").is_file()
    )
    again = runner.invoke(
        app, ["merge", str(tiny_llama_dir), "--lora", str(adapter), "-o", str(tmp_path / "m")]
    )
    text = " ".join(again.output.split())  # rich wraps long error lines
    assert again.exit_code == 1 and "m already exists hint: pass --force" in text
    ok = runner.invoke(app, ["verify", str(smollm2_f16), str(smollm2_hf_dir), "--json", "--threads", "1"])
    assert ok.exit_code == 0, ok.output
    [row] = json.loads(ok.stdout)
    assert row["passed"] and row["quant"] == "f16" and row["tokens_match"] == row["prompts"]
    missing = runner.invoke(app, ["verify", str(tmp_path / "nope.gguf"), str(smollm2_hf_dir)])
    assert missing.exit_code == 1 and "error:" in missing.output


def test_help_stays_light():
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom knowlm_local.cli import app\n"
        "for c in ('convert', 'merge', 'verify'):\n"
        "    assert CliRunner().invoke(app, [c, '--help']).exit_code == 0\n"
        "heavy = ('torch', 'transformers', 'llama_cpp', 'gguf', 'numpy')\n"
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_bf16_checkpoint_keeps_bf16_through_the_intermediate(sp_tokenizer_dir, tmp_path):
    import torch

    folder = build_tiny_llama(tmp_path / "bf16", sp_tokenizer_dir, seed=5, dtype=torch.bfloat16)
    result = convert(str(folder), quants="bf16,q8_0", output=tmp_path / "out")
    record = json.loads(result.provenance.read_text())["files"]
    assert record["bf16-q8_0.gguf"]["intermediate"] == "bf16"
    from safetensors.torch import load_file

    want = load_file(folder / "model.safetensors")["model.norm.weight"].float().numpy()
    assert np.array_equal(
        np.frombuffer(_tensor_bytes(result.outputs["bf16"])["output_norm.weight"], np.float32), want
    )
