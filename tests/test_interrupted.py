"""Killed in the middle of a write: nothing half-written is left where a later run (or `models`) would trust it.

The real CLI converts / merges the embedded model's HF export (a few hundred
MB to write) in a child process that is SIGKILLed as soon as its temporary
output has grown; then the destination must hold no final file, the store
must not list a model, and the next run must succeed and sweep the dead
run's leftover temporary file. (`extract` and `download` have their own kill
tests in test_ie_extract.py and test_download.py.)
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

from conftest import knowlm_exe
from convert_fixtures import *  # noqa: F401,F403  (the session fixtures)
from convert_fixtures import make_lora


def _partials(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.partial")) if folder.exists() else []


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def _kill_when_writing(cmd: list[str], watch: Path, env: dict, min_bytes: int = 20_000_000) -> None:
    """Start ``cmd`` and SIGKILL it once a temporary output under ``watch`` holds ``min_bytes``."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if any(_size(p) >= min_bytes for p in _partials(watch)):
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read().decode()}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.stderr.close()
        if proc.poll() is None:
            proc.kill()


def test_killed_convert_leaves_no_gguf_and_the_next_run_cleans_up(smollm2_hf_dir, tmp_path, cli_env):
    env = {**cli_env, "KNOWLM_HOME": str(tmp_path / "home")}
    store = tmp_path / "home" / "models" / "smolhf"
    cmd = [knowlm_exe(), "convert", str(smollm2_hf_dir), "-q", "f32", "--name", "smolhf"]
    _kill_when_writing(cmd, store, env)
    assert _partials(store), "the killed run should have left its temporary file"
    assert not list(store.glob("*.gguf")) and not (store / "provenance.json").exists()
    listed = subprocess.run([knowlm_exe(), "models", "--json"], env=env, capture_output=True, text=True, check=True)
    assert "smolhf" not in listed.stdout
    chat = subprocess.run([knowlm_exe(), "chat", "-m", "smolhf", "-p", "hi"], env=env, capture_output=True, text=True)
    assert chat.returncode == 1 and "error:" in chat.stderr and "Traceback" not in chat.stderr

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in store.glob("*.gguf")] == ["smolhf-f32.gguf"]
    assert _partials(store) == []  # the dead run's leftover was swept
    record = json.loads((store / "provenance.json").read_text())["files"]["smolhf-f32.gguf"]
    assert record["quant"] == "f32"


def test_killed_merge_leaves_no_folder_and_the_next_run_cleans_up(smollm2_hf_dir, tmp_path, cli_env):
    adapter = make_lora(smollm2_hf_dir, tmp_path / "adapter", r=4, target_modules=["q_proj", "v_proj"])
    out = tmp_path / "merged"
    cmd = [knowlm_exe(), "merge", str(smollm2_hf_dir), "--lora", str(adapter), "-o", str(out), "--dtype", "float32"]
    _kill_when_writing(cmd, tmp_path, cli_env)
    assert not out.exists()
    assert _partials(tmp_path)
    done = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (out / "config.json").is_file() and list(out.glob("*.safetensors"))
    assert [p for p in _partials(tmp_path) if p.parent == tmp_path] == []


def test_killed_finetune_resumes_from_its_last_complete_checkpoint(tiny_llama_dir, tmp_path, cli_env):
    """SIGKILL during training (possibly while a checkpoint is being written): --resume sets a half-written
    checkpoint aside, continues from the last complete one and finishes with the full step count."""
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say word {i % 5}.", "output": f"w{i % 5}"}) + "\n"
                            for i in range(40)))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {tiny_llama_dir}\noutput_dir: {tmp_path / 'run'}\nmode: lora\ndata:\n  train: [{data}]\n"
                      "  template: alpaca\n  max_len: 160\nlora:\n  r: 4\n  alpha: 8\nmax_steps: 40\n"
                      "micro_batch_size: 4\nsave_steps: 3\nlogging_steps: 2\nlearning_rate: 1.0e-3\nthreads: 1\n")
    run = tmp_path / "run"
    cmd = [knowlm_exe(), "finetune", "--config", str(recipe)]
    proc = subprocess.Popen(cmd, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(list(run.glob("checkpoint-*"))) < 2:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    # make sure a cut-short checkpoint is there too, as a kill during a save leaves it
    # (the kill itself may have cut the newest one short: copy the newest complete one)
    steps = sorted(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*"))
    complete = [s for s in steps if (run / f"checkpoint-{s}" / "trainer_state.json").is_file()]
    assert complete, steps
    partial = run / f"checkpoint-{steps[-1] + 1}"
    shutil.copytree(run / f"checkpoint-{complete[-1]}", partial)
    (partial / "trainer_state.json").unlink()
    again = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "already holds a training run" in again.stderr
    resumed = subprocess.run(cmd + ["--resume"], env=cli_env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{partial.name} was cut short" in resumed.stderr
    record = json.loads((run / "knowlm_train.json").read_text())
    assert record["steps"] == 40
    assert (run / "adapter_model.safetensors").is_file()
