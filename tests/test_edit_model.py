"""Knowledge editing on the embedded model's HF export (CPU, float32): the edit takes, and lasts.

One ROME edit (Eiffel Tower -> Rome) is made once for the module through the
library function under ``knowlm-local edit``, with the GGUF re-check on: the
edited prompt and a rephrase must now generate the new target, unrelated
prompts must keep the greedy answers they had, the F16 GGUF of the edited
folder must give the same answer through llama.cpp, and ``--undo`` must give
back the original weights bit for bit.
"""

from __future__ import annotations

import json

import pytest

from knowlm_local.edit.requests import make_request

# One real edit plus its GGUF re-check takes 2-3 minutes on two idle cores; much longer on a busy machine.
pytestmark = pytest.mark.timeout(1800)

EIFFEL = {"prompt": "The Eiffel Tower is located in", "subject": "Eiffel Tower", "target": "Rome",
          "rephrases": ["Where is the Eiffel Tower? It is in"],
          "locality": ["The capital of Germany is", "The chemical symbol for gold is"],
          "neighbours": ["The Statue of Liberty is located in"],
          "portability": [{"prompt": "The Eiffel Tower is in the country of", "answer": "Italy"}]}


@pytest.fixture(scope="module")
def rome_edit(smollm2_hf_dir, tmp_path_factory):
    from knowlm_local.edit.run import EditOptions, apply_edits

    out = tmp_path_factory.mktemp("edited") / "eiffel"
    report = apply_edits(str(smollm2_hf_dir), [make_request(EIFFEL, "test", 0)], str(out),
                         EditOptions(contexts=0, fluency=False, gguf="f16"))
    return report


def test_rome_edit_generates_the_new_target(rome_edit):
    (res,) = rome_edit.results
    assert res["answer"].strip().startswith("Rome")
    assert res["reliability"] == {"tf": 1.0, "gen": 1.0}
    assert res["generalization"]["gen"] == 1.0
    assert rome_edit.before["reliability"]["gen"] == 0.0  # the model did not say Rome before


def test_rome_edit_keeps_unrelated_answers(rome_edit):
    (res,) = rome_edit.results
    assert res["locality"]["gen"] == 1.0  # both unrelated prompts: the same greedy tokens as before the edit
    # the neighbour is scored on its own (before the edit it agrees with itself), never mixed into locality
    assert rome_edit.before["neighbourhood"] == {"tf": 1.0, "gen": 1.0}
    assert res["neighbourhood"]["gen"] in (0.0, 1.0) and 0.0 <= res["neighbourhood"]["tf"] <= 1.0


def test_edit_survives_f16_gguf(rome_edit):
    (res,) = rome_edit.gguf["f16"]["results"]
    assert res["reliability"]["gen"] == 1.0 and res["answer"].strip().startswith("Rome")
    assert res["locality"]["gen"] == 1.0


def test_report_and_log_on_disk(rome_edit):
    data = json.loads((rome_edit.folder / "edit-report.json").read_text(encoding="utf-8"))
    assert data["results"][0]["reliability"]["gen"] == 1.0 and "f16" in data["gguf"]
    log = json.loads((rome_edit.folder / "edits.json").read_text(encoding="utf-8"))
    (entry,) = log["edits"]
    assert entry["method"] == "rome" and entry["requests"][0]["target"] == "Rome"
    assert entry["summary"]["reliability"]["gen"] == 1.0


def test_cli_log_and_undo_restore_bit_identical(rome_edit, smollm2_hf_dir, runner, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file

    from knowlm_local.cli import app

    folder = tmp_path / "copy"
    shutil.copytree(rome_edit.folder, folder)
    res = runner.invoke(app, ["edit", str(folder), "--log"])
    assert res.exit_code == 0 and "Eiffel Tower → Rome" in res.output and "active" in res.output
    res = runner.invoke(app, ["edit", str(folder), "--undo", "1"])
    assert res.exit_code == 0, res.output
    a, b = load_file(str(folder / "model.safetensors")), load_file(str(smollm2_hf_dir / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b)
    res = runner.invoke(app, ["edit", str(folder), "--undo", "1"])
    assert res.exit_code == 1 and "already undone" in res.output


def test_ike_memory_and_chat(smollm2_hf_dir, tmp_path, runner, cli_env):
    import subprocess

    from knowlm_local.edit.ike import read_memory
    from knowlm_local.edit.run import EditOptions, apply_edits
    from tests.conftest import knowlm_exe

    out = tmp_path / "facts.json"
    rep = apply_edits(str(smollm2_hf_dir), [make_request(EIFFEL, "ike", 0)], str(out),
                      EditOptions(method="ike", fluency=False))
    assert [f.target for f in read_memory(out)] == ["Rome"]
    (res,) = rep.results
    assert set(res) >= {"reliability", "generalization", "locality", "portability", "chat"}
    assert rep.before["reliability"]["gen"] == 0.0
    # the memory rides along into chat as a system prompt (greedy, a few tokens)
    proc = subprocess.run([knowlm_exe(), "chat", "--edit-memory", str(out), "-p", "Where is the Eiffel Tower?",
                           "--temperature", "0", "-n", "24"], env=cli_env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"facts": 3}', encoding="utf-8")
    proc = subprocess.run([knowlm_exe(), "chat", "--edit-memory", str(bad), "-p", "hi"], env=cli_env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "is not an edit memory" in proc.stderr
