"""Recipes as data: every YAML recipe validates, DeepSpeed accepts every JSON, configs refuse typos, the
launcher builds the right commands, and the CLI wires it all."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
from convert_fixtures import *  # noqa: F401,F403  (the session fixtures)

from knowlm_local.errors import KnowLMError
from knowlm_local.train.config import FinetuneConfig, PretrainConfig, load_config, parse_extra_args

ROOT = Path(__file__).resolve().parents[1]
FINETUNE = sorted((ROOT / "recipes" / "finetune").glob("*.yaml"))
PRETRAIN = sorted((ROOT / "recipes" / "pretrain").glob("*.yaml"))
DEEPSPEED = sorted((ROOT / "recipes" / "deepspeed").glob("*.json"))


@pytest.mark.parametrize("path", FINETUNE + PRETRAIN, ids=lambda p: p.name)
def test_every_recipe_loads_and_validates(path):
    cls = FinetuneConfig if path.parent.name == "finetune" else PretrainConfig
    cfg = load_config(cls, str(path))
    assert cfg.model and cfg.output_dir
    if cfg.deepspeed:
        assert Path(cfg.deepspeed).is_file(), cfg.deepspeed  # resolved against the repository
    text = path.read_text(encoding="utf-8")
    assert text.lstrip().startswith("#")  # each recipe says where its numbers come from
    if cls is FinetuneConfig:
        for name in cfg.data.train:
            if name.startswith(str(ROOT)):
                assert Path(name).is_file()


def test_at_least_the_published_recipes_ship():
    names = {p.stem for p in FINETUNE + PRETRAIN}
    assert {"knowlm-13b-ie-lora", "oneke-full", "iepile-lora", "qlora-24gb", "smollm2-cpu", "knowlm-13b",
            "smollm2-pretrain-cpu"} <= names
    ie = load_config(FinetuneConfig, str(ROOT / "recipes/finetune/knowlm-13b-ie-lora.yaml"))
    assert (ie.lora.r, ie.lora.alpha, ie.lora.dropout, ie.learning_rate, ie.data.max_len) == (16, 32, 0.05, 3e-4, 512)
    q = load_config(FinetuneConfig, str(ROOT / "recipes/finetune/qlora-24gb.yaml"))
    assert (q.mode, q.lora.r, q.lora.alpha, q.max_grad_norm, q.optim) == ("qlora", 64, 16, 0.3, "paged_adamw_32bit")
    pt = load_config(PretrainConfig, str(ROOT / "recipes/pretrain/knowlm-13b.yaml"))
    assert (pt.micro_batch_size, pt.gradient_accumulation, pt.learning_rate, pt.warmup_steps) == (20, 3, 1.5e-5, 300)


@pytest.mark.parametrize("path", DEEPSPEED, ids=lambda p: p.name)
def test_deepspeed_configs_pass_deepspeeds_own_parser(path):
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import LlamaConfig, TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    raw = json.loads(path.read_text())
    args = TrainingArguments(output_dir=str(path.parent / "unused"), per_device_train_batch_size=20,
                             gradient_accumulation_steps=3, learning_rate=1.5e-5, report_to=[], use_cpu=True)
    hf = HfTrainerDeepSpeedConfig(raw)
    hf.trainer_config_process(args)
    hf.trainer_config_finalize(args, types.SimpleNamespace(config=LlamaConfig(hidden_size=5120)), 1000)
    assert "auto" not in json.dumps(hf.config)  # transformers filled every "auto" from the run's settings
    ds = DeepSpeedConfig(hf.config)
    assert ds.zero_optimization_stage == int(raw["zero_optimization"]["stage"])
    assert ds.train_batch_size == 60  # 20 micro x 3 accumulation x 1 process
    if "offload" in path.name:
        assert ds.zero_config.offload_optimizer is not None
    if ds.zero_optimization_stage == 3:  # without this, adapters saved under ZeRO-3 are empty
        assert raw["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_unknown_keys_name_the_closest_and_values_are_typed(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("model: x\noutput_dir: y\nlearnig_rate: 1e-4\n")
    with pytest.raises(KnowLMError, match="unknown config key 'learnig_rate'") as err:
        load_config(FinetuneConfig, str(bad))
    assert "learning_rate" in err.value.hint
    bad.write_text("model: x\nlora:\n  rank: 8\n")
    with pytest.raises(KnowLMError, match="unknown config key 'lora.rank'"):
        load_config(FinetuneConfig, str(bad))
    bad.write_text("model: x\nmicro_batch_size: many\n")
    with pytest.raises(KnowLMError, match="micro_batch_size: 'many' is not a int"):
        load_config(FinetuneConfig, str(bad))
    bad.write_text("model: x\nmode: sometimes\n")
    with pytest.raises(KnowLMError, match="mode must be one of lora, qlora, full"):
        load_config(FinetuneConfig, str(bad))
    bad.write_text("- a list\n")
    with pytest.raises(KnowLMError, match="must be a mapping"):
        load_config(FinetuneConfig, str(bad))
    bad.write_text("model: [unclosed\n")
    with pytest.raises(KnowLMError, match="not valid YAML at line"):
        load_config(FinetuneConfig, str(bad))


def test_command_line_over_file_over_defaults(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: m\noutput_dir: out\nlearning_rate: 1.0e-4\nlora:\n  r: 4\n")
    cfg = load_config(FinetuneConfig, str(recipe), parse_extra_args(
        ["--learning-rate", "2e-4", "--lora.r=8", "--max-steps", "20", "--data.packing"]))
    assert (cfg.learning_rate, cfg.lora.r, cfg.max_steps, cfg.data.packing) == (2e-4, 8, 20, True)
    assert cfg.lora.alpha == 32 and cfg.epochs == 3.0  # defaults where neither says otherwise
    file_only = load_config(FinetuneConfig, str(recipe))
    assert (file_only.learning_rate, file_only.lora.r) == (1e-4, 4)
    with pytest.raises(KnowLMError, match="unknown option --learnig-rate") as err:
        load_config(FinetuneConfig, str(recipe), {"learnig-rate": "1"})
    assert "learning_rate" in err.value.hint
    with pytest.raises(KnowLMError, match="unexpected argument"):
        parse_extra_args(["20"])


def test_launcher_commands(tmp_path, monkeypatch):
    from knowlm_local.train.launch import hostfile_slots, launch_command

    for var in ("WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert launch_command("finetune", "r.yaml", [], 1, "", "") is None
    assert launch_command("finetune", "r.yaml", ["--max-steps", "5"], 4, "", "") == [
        "torchrun", "--standalone", "--nproc_per_node", "4", "-m", "knowlm_local.train.entry", "finetune",
        "--config", "r.yaml", "--max-steps", "5"]
    ds = launch_command("pretrain", "p.yaml", [], 8, "", "zero3.json")
    assert ds[:3] == ["deepspeed", "--num_gpus", "8"] and ds[3:5] == ["--module", "knowlm_local.train.entry"]
    hosts = tmp_path / "hosts"
    hosts.write_text("node1 slots=8\nnode2 slots=8  # second node\n")
    assert hostfile_slots(str(hosts)) == 8
    multi = launch_command("pretrain", "p.yaml", [], 0, str(hosts), "zero3.json")
    assert multi[:5] == ["deepspeed", "--hostfile", str(hosts), "--num_gpus", "8"]
    hosts.write_text("node1 8\n")
    with pytest.raises(KnowLMError, match="line 1 .* is not `hostname slots=N`"):
        hostfile_slots(str(hosts))
    monkeypatch.setenv("WORLD_SIZE", "4")  # already started by a launcher: run in-process
    assert launch_command("finetune", "r.yaml", [], 4, "", "") is None


def test_cli_prints_the_launch_command_and_rejects_bad_overrides(tmp_path, cli_env):
    import subprocess

    from conftest import knowlm_exe

    recipe = ROOT / "recipes" / "finetune" / "knowlm-13b-ie-lora.yaml"
    env = {k: v for k, v in cli_env.items() if k not in ("WORLD_SIZE", "LOCAL_RANK")}
    out = subprocess.run([knowlm_exe(), "finetune", "--config", str(recipe), "--max-steps", "5", "--print-command"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "torchrun --standalone --nproc_per_node 8 -m knowlm_local.train.entry finetune" in out.stderr
    assert "--max-steps 5" in out.stderr
    bad = subprocess.run([knowlm_exe(), "finetune", "--config", "smollm2-cpu", "--max-stepz", "5"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "error: unknown option --max-stepz" in bad.stderr and "max_steps" in bad.stderr
    missing = subprocess.run([knowlm_exe(), "finetune", "--config", "no-such-recipe"], env=env, capture_output=True,
                             text=True, timeout=120)
    assert missing.returncode == 1 and "smollm2-cpu" in missing.stderr  # lists the shipped recipes


def test_qlora_is_refused_without_cuda_and_with_zero3(tmp_path):
    from knowlm_local.train.sft import check_runtime

    q = load_config(FinetuneConfig, str(ROOT / "recipes/finetune/qlora-24gb.yaml"))
    with pytest.raises(KnowLMError, match="QLoRA (needs a CUDA GPU|cannot be combined)"):
        check_runtime(q)
    z3 = load_config(FinetuneConfig, str(ROOT / "recipes/finetune/qlora-24gb.yaml"),
                     {"deepspeed": str(ROOT / "recipes/deepspeed/zero3.json")})
    with pytest.raises(KnowLMError, match="QLoRA cannot be combined with DeepSpeed ZeRO-3"):
        check_runtime(z3)


def test_cli_build_ie_data_and_prepare_pretrain(tmp_path, cli_env, sp_tokenizer_dir):
    import subprocess

    from conftest import knowlm_exe

    raw = tmp_path / "raw.jsonl"
    raw.write_text(json.dumps({"id": "1", "text": "Ann Lee founded Nimbus in Paris.",
                               "entity": [{"entity": "Ann Lee", "entity_type": "person"},
                                          {"entity": "Paris", "entity_type": "location"}],
                               "relation": [{"head": "Nimbus", "relation": "founder", "tail": "Ann Lee"}]}) + "\n")
    out = tmp_path / "ie.jsonl"
    proc = subprocess.run([knowlm_exe(), "build-ie-data", str(raw), "--task", "ner,re", "-o", str(out)],
                          env=cli_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert {r["task"] for r in records} == {"NER", "RE"}
    again = subprocess.run([knowlm_exe(), "build-ie-data", str(raw), "-o", str(out)], env=cli_env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "already exists" in again.stderr and "Traceback" not in again.stderr

    store = tmp_path / "pt"
    proc = subprocess.run([knowlm_exe(), "prepare-pretrain", str(ROOT / "recipes/data/pretrain-sample.txt"),
                           "--tokenizer", str(sp_tokenizer_dir), "--max-len", "128", "--min-len", "4", "-o", str(store),
                           "--weight", "pretrain-sample=2"], env=cli_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((store / "meta.json").read_text())
    assert meta["samples"] > 0 and meta["sources"]["pretrain-sample"]["weight"] == 2.0
    bad = subprocess.run([knowlm_exe(), "prepare-pretrain", str(raw), "--tokenizer", str(sp_tokenizer_dir), "-o",
                          str(tmp_path / "x"), "--weight", "oops"], env=cli_env, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 1 and "SOURCE=NUMBER" in bad.stderr
