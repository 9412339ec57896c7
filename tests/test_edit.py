"""Knowledge editing without the real model: metrics by hand, request checks, the log and undo, MEMIT's shape.

The weight-editing mechanics run on a tiny random Llama (4 layers) that uses
the embedded model's tokenizer; what an edit does to real answers is tested in
tests/test_edit_model.py on the embedded model itself.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest

from knowlm_local.edit import metrics
from knowlm_local.edit.requests import make_request, read_requests
from knowlm_local.errors import KnowLMError

REQ = {"prompt": "The Eiffel Tower is located in", "subject": "Eiffel Tower", "target": "Rome"}


# -- metrics ---------------------------------------------------------------------------------------

def test_normalize_and_matches():
    assert metrics.normalize("  The Rome! ") == "rome"
    assert metrics.exact_match(" Rome,", "rome")
    assert not metrics.exact_match(" Romania", "Rome")
    assert metrics.exact_match("  罗马。", "罗马")
    assert metrics.contains("It is in Rome, Italy.", "rome")
    assert not metrics.contains("It is in Paris.", "Rome")
    assert not metrics.contains("anything", "...")  # a target that normalises to nothing never matches


def test_token_accuracy_and_mean():
    assert metrics.token_accuracy([1, 2, 3, 9], [1, 2, 3, 4]) == 0.75
    assert metrics.token_accuracy([], []) == 0.0
    assert metrics.mean([None, 0.5, 1.0]) == 0.75
    assert metrics.mean([None]) is None


def test_ngram_entropy_by_hand():
    # bigrams of a b a b: (a,b) x2, (b,a) x1 -> H2 = -(2/3 log2 2/3 + 1/3 log2 1/3); trigrams (a,b,a), (b,a,b) -> H3 = 1
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    expected = (2 / 3 * h2 + 4 / 3 * 1.0) / 2
    assert metrics.ngram_entropy(["a", "b", "a", "b"]) == pytest.approx(expected)
    assert metrics.ngram_entropy(["x"] * 50) == 0.0  # a loop has no entropy
    assert metrics.fluency("长城长城") == pytest.approx(metrics.ngram_entropy(["长", "城", "长", "城"]))


# -- requests --------------------------------------------------------------------------------------

def test_request_checks():
    r = make_request({**REQ, "rephrases": "Where is the Eiffel Tower? In", "locality": ["The capital of Germany is"],
                      "portability": [{"prompt": "The Eiffel Tower is in the country of", "answer": "Italy"}]}, "x")
    assert r.rephrases == ("Where is the Eiffel Tower? In",) and r.portability[0].answer == "Italy"
    with pytest.raises(KnowLMError, match="does not occur in the prompt"):
        make_request({**REQ, "subject": "Tower of Pisa"}, "f:1")
    with pytest.raises(KnowLMError, match="'target' is missing or empty"):
        make_request({**REQ, "target": "  "}, "f:1")
    with pytest.raises(KnowLMError, match="portability"):
        make_request({**REQ, "portability": [{"prompt": "q"}]}, "f:1")


def test_easyedit_field_names_and_subject_slot():
    r = make_request({"prompt": "{} is located in", "subject": "The Eiffel Tower", "target_new": {"str": "Rome"},
                      "rephrase_prompt": "Where is the Eiffel Tower?", "locality_prompt": "The capital of Germany is"},
                     "x")
    assert (r.prompt, r.target, r.rephrases, r.locality) == (
        "The Eiffel Tower is located in", "Rome", ("Where is the Eiffel Tower?",), ("The capital of Germany is",))


def test_neighbours_apart_from_locality_in_every_spelling():
    for key, value in (("neighbours", ["The Statue of Liberty is located in"]),
                       ("neighbors", "The Statue of Liberty is located in"),
                       ("neighborhood_prompts", [{"prompt": "The Statue of Liberty is located in"}])):
        r = make_request({**REQ, "locality": ["The capital of Germany is"], key: value}, "x")
        assert r.neighbours == ("The Statue of Liberty is located in",), key
        assert r.locality == ("The capital of Germany is",)
        assert r.to_json()["neighbours"] == ["The Statue of Liberty is located in"]
    assert make_request(REQ, "x").neighbours == ()
    with pytest.raises(KnowLMError, match="'neighbours' must be"):
        make_request({**REQ, "neighbours": [""]}, "f:1")


def test_read_requests_names_the_bad_line(tmp_path):
    path = tmp_path / "edits.jsonl"
    path.write_text(json.dumps(REQ) + "\n" + json.dumps({**REQ, "target": ""}) + "\n", encoding="utf-8")
    with pytest.raises(KnowLMError, match=r"edits\.jsonl:2: 'target'"):
        read_requests(path)
    path.write_text("not json\n", encoding="utf-8")
    with pytest.raises(KnowLMError, match="not valid JSON"):
        read_requests(path)


# -- a tiny random Llama ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, smollm2_hf_dir):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-llama")
    cfg = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (smollm2_hf_dir / name).exists():
            shutil.copy(smollm2_hf_dir / name, out / name)
    return out


def _tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


FAST = dict(contexts=0, evaluate=False, chat=False)


def test_rome_log_undo_exact_and_source_untouched(tiny_llama, tmp_path):
    import torch

    from knowlm_local.edit import log as editlog
    from knowlm_local.edit.rome import ValueParams
    from knowlm_local.edit.run import EditOptions, apply_edits, list_edits, undo_edit

    source = _tensors(tiny_llama)
    out = tmp_path / "edited"
    opts = EditOptions(layers=(1,), value=ValueParams(v_steps=3), **FAST)
    rep = apply_edits(str(tiny_llama), [make_request(REQ, "a")], str(out), opts)
    assert rep.edits == [1]
    after = _tensors(out)
    changed = [k for k in source if not torch.equal(source[k], after[k])]
    assert changed == ["model.layers.1.mlp.down_proj.weight"]
    assert torch.equal(_tensors(tiny_llama)["model.layers.1.mlp.down_proj.weight"],
                       source["model.layers.1.mlp.down_proj.weight"])  # the source folder is never written

    # a second, sequential edit in place on the same layer
    second = make_request({"prompt": "Paris is the capital of", "subject": "Paris", "target": "Spain"}, "b")
    rep2 = apply_edits(str(out), [second], None, opts)
    assert rep2.folder == out and rep2.edits == [2]
    assert [e.n for e in list_edits(str(out))] == [1, 2]
    with pytest.raises(KnowLMError, match="later edit"):
        undo_edit(str(out), 1)
    with pytest.raises(KnowLMError, match="there is no edit 7"):
        undo_edit(str(out), 7)
    assert undo_edit(str(out), 1, cascade=True) == [1, 2]
    restored = _tensors(out)
    assert all(torch.equal(source[k], restored[k]) for k in source)  # bit for bit
    assert all(e.undone for e in editlog.EditLog.load(out).entries)
    with pytest.raises(KnowLMError, match="already undone"):
        undo_edit(str(out), 2)


def test_torch_greedy_is_generate_greedy_without_deprecated_cache_names(tiny_llama):
    """The evaluator's own KV-cached greedy loop gives HF generate's greedy tokens, on this transformers'
    cache argument (``past_key_values`` is deprecated in 5.x and goes in 5.40)."""
    import warnings

    import torch

    from knowlm_local.edit.evaluate import TorchScorer
    from knowlm_local.edit.model import EditableModel

    em = EditableModel(tiny_llama, device="cpu")
    ids = em.ids("The Eiffel Tower is located in")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = TorchScorer(em).greedy(ids, 12)
    assert not [w for w in caught if "past_key_values" in str(w.message)]
    with torch.no_grad():
        ref = em.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                                eos_token_id=em.tok.eos_token_id, pad_token_id=em.tok.eos_token_id)
    assert ours == ref[0, len(ids):].tolist()[:len(ours)] and len(ours) == 12


def test_rank_one_update_hits_the_new_value(tiny_llama):
    import torch

    from knowlm_local.edit import rome
    from knowlm_local.edit.model import EditableModel

    em = EditableModel(tiny_llama, device="cpu")
    req = make_request(REQ, "a")
    k = rome.compute_key(em, 2, rome.key_texts(em, req, [""], chat=False))
    delta = torch.randn(em.weight(2).shape[0])
    left, right = rome.rank_one(k, delta)
    w = em.weight(2).detach()
    assert torch.allclose((w + torch.outer(left, right)) @ k, w @ k + delta, atol=1e-4)
    inv = torch.eye(k.shape[0]) * 2.0  # any covariance: still exact at k*
    left, right = rome.rank_one(k, delta, inv)
    assert torch.allclose((w + torch.outer(left, right)) @ k, w @ k + delta, atol=1e-4)


def test_rank_one_leaves_the_prompts_other_keys_alone(tiny_llama):
    import torch

    from knowlm_local.edit import rome
    from knowlm_local.edit.model import EditableModel

    em = EditableModel(tiny_llama, device="cpu")
    req = make_request(REQ, "a")
    texts = rome.key_texts(em, req, ["", "Once upon a time. "], chat=False)
    k, others = rome.compute_keys(em, 2, texts)
    assert torch.allclose(k, rome.compute_key(em, 2, texts))
    n_real = sum(len(em.ids(t)) for t, _ in texts)
    assert others.shape == (n_real - len(texts), k.shape[0])  # every real position but the subject's
    delta = torch.randn(em.weight(2).shape[0])
    w = em.weight(2).detach()
    plain = torch.outer(*rome.rank_one(k, delta)) @ others.T
    assert plain.abs().max() > 1e-2  # without the constraint the update reaches those keys
    for inv in (None, torch.diag(torch.rand(k.shape[0]) + 0.5)):
        dw = torch.outer(*rome.rank_one(k, delta, inv, others))
        assert torch.allclose((w + dw) @ k, w @ k + delta, atol=1e-3)  # still exact where the fact is read
        assert (dw @ others.T).abs().max() < 1e-3 * delta.abs().max()  # and nothing moves at the other words


def test_memit_batch_of_three_over_layers(tiny_llama, tmp_path):
    import torch
    from safetensors import safe_open

    from knowlm_local.edit.rome import ValueParams
    from knowlm_local.edit.run import EditOptions, apply_edits, undo_edit

    reqs = [make_request(REQ, "a", 0),
            make_request({"prompt": "Paris is the capital of", "subject": "Paris", "target": "Spain"}, "b", 1),
            make_request({"prompt": "Water is made of", "subject": "Water", "target": "gold"}, "c", 2)]
    source = _tensors(tiny_llama)
    out = tmp_path / "memit"
    cov = tmp_path / "cov.txt"
    cov.write_text("The quick brown fox jumps over the lazy dog.\nA small town lies by the river.\n", encoding="utf-8")
    opts = EditOptions(method="memit", layers=(1, 2), cov_text=str(cov), value=ValueParams(v_steps=3), **FAST)
    rep = apply_edits(str(tiny_llama), reqs, str(out), opts)
    assert rep.edits == [1]
    after = _tensors(out)
    changed = sorted(k for k in source if not torch.equal(source[k], after[k]))
    assert changed == ["model.layers.1.mlp.down_proj.weight", "model.layers.2.mlp.down_proj.weight"]
    with safe_open(str(out / "edits" / "0001.safetensors"), "pt") as fh:
        left = fh.get_tensor("left/model.layers.1.mlp.down_proj.weight")
        right = fh.get_tensor("right/model.layers.1.mlp.down_proj.weight")
    assert left.shape == (32, 3) and right.shape == (64, 3)  # rank = batch size
    assert torch.allclose(after["model.layers.1.mlp.down_proj.weight"],
                          source["model.layers.1.mlp.down_proj.weight"] + left @ right.T, atol=1e-5)
    undo_edit(str(out), 1)
    assert all(torch.equal(source[k], v) for k, v in _tensors(out).items())


def test_unsupported_architecture_names_the_supported(tmp_path, smollm2_hf_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    from knowlm_local.edit.run import EditOptions, apply_edits

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=100)).save_pretrained(folder)
    with pytest.raises(KnowLMError, match="GPT2LMHeadModel is not supported.*") as info:
        apply_edits(str(folder), [make_request(REQ, "a")], str(tmp_path / "o"), EditOptions(**FAST))
    assert "LlamaForCausalLM" in info.value.hint


def test_cli_errors(runner, tiny_llama, tmp_path):
    from knowlm_local.cli import app

    def run(*args):
        res = runner.invoke(app, ["edit", *map(str, args)])
        return res.exit_code, res.output

    code, out = run(tiny_llama, "--prompt", "The Eiffel Tower is in", "--subject", "Big Ben", "--target", "Rome")
    assert code == 1 and "does not occur in the prompt" in out and "hint:" in out
    code, out = run(tiny_llama, "--prompt", "The Eiffel Tower is in", "--subject", "Eiffel Tower", "--target", "")
    assert code == 1 and "'target' is missing or empty" in out
    code, out = run(tiny_llama, "--undo", "1")
    assert code == 1 and "no edit log" in out
    code, out = run(tiny_llama, "--layers", "x-y", "--prompt", "a b", "--subject", "a", "--target", "c")
    assert code == 1 and "not a layer list" in out
    code, out = run(tiny_llama, "--layers", "9", "--prompt", "a b", "--subject", "a", "--target", "c",
                    "-o", tmp_path / "x", "--no-eval", "--contexts", "0")
    assert code == 1 and "layer 9 does not exist" in out
    assert not (tmp_path / "x").exists()  # nothing half-written
    seed = tmp_path / "seeds.txt"
    seed.write_text("not json", encoding="utf-8")
    code, out = run(tiny_llama, "--requests", seed)
    assert code == 1 and "not valid JSON" in out
