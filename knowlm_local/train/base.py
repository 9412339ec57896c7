"""The model a recipe trains: a zoo name, hub repo id or folder as Hugging Face weights plus its tokenizer.

Training needs safetensors weights, never a GGUF. The embedded demo model is
shipped only as a GGUF, so the first time a recipe names it, it is exported
once to an HF folder in the store (``KNOWLM_HOME/models/<name>/hf``), with
its tokenizer repaired: transformers' GGUF export writes a ``tokenizer.json``
without SmolLM's digit-splitting pre-tokenizer, which then tokenizes spaces
before digits differently from llama.cpp (``"x  12"`` is ``x``, two single
spaces, ``1``, ``2`` instead of ``x``, one double space, ...). Training must
see the tokens inference will see, so the Digits step is put back
(tests/test_train_base.py checks both tokenizers agree on a sample set).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from knowlm_local.errors import KnowLMError

DIGITS_FIRST = {
    "type": "Sequence",
    "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    ],
}


@dataclass(frozen=True)
class TrainBase:
    """HF weights to train, and what provenance and adapters should say they are."""

    folder: Path
    name: str  # what convert/merge/extract accept for it (zoo name, repo id or the folder path)
    repo: str | None = None
    revision: str | None = None
    embedded: bool = False


def resolve_base(spec: str, revision: str | None = None) -> TrainBase:
    """``spec`` as HF weights on disk (exporting the embedded GGUF model on first use)."""
    from knowlm_local.zoo import find_card

    card = find_card(spec.partition(":")[0]) if not Path(spec).expanduser().exists() else None
    if card is not None and card.embedded:
        return TrainBase(export_embedded(), card.name, card.hf_repo, card.revision, embedded=True)
    from knowlm_local.convert.resolve import resolve_source

    source = resolve_source(spec, revision)
    if source.lora is not None:
        raise KnowLMError(f"{spec} is a LoRA adapter, not a base model to train",
                          "merge it first (knowlm-local merge) or train on its base")
    name = source.card.name if source.card else (source.repo or str(source.folder.resolve()))
    return TrainBase(source.folder, name, source.repo, source.revision)


def export_embedded(force: bool = False) -> Path:
    """The embedded GGUF model as an HF safetensors folder in the store (written once, atomically)."""
    from knowlm_local.embedded import embedded_gguf
    from knowlm_local.store import model_dir
    from knowlm_local.zoo import embedded_card

    card = embedded_card()
    dest = model_dir(card.name) / "hf"
    if (dest / "config.json").is_file() and not force:
        return dest
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from knowlm_local.convert.outputs import atomic_dir

    gguf = embedded_gguf(card)
    with atomic_dir(dest, force=True) as tmp:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        model.hf_quantizer = None  # the weights are plain float32 once loaded; transformers refuses to save otherwise
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        fix_digit_split(tmp)
        (tmp / "provenance.json").write_text(json.dumps({
            "exported_from": str(gguf), "gguf_file": gguf.name, "hf_repo": card.hf_repo,
            "note": "dequantized from the embedded GGUF; tokenizer pre-tokenizer restored (digits split first)",
        }, indent=2) + "\n", encoding="utf-8")
    return dest


def fix_digit_split(folder: Path) -> bool:
    """Put SmolLM's Digits pre-tokenizer back into a byte-level ``tokenizer.json`` that lost it; True if changed."""
    path = Path(folder) / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    pre = data.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel":
        data["pre_tokenizer"] = DIGITS_FIRST
        path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        return True
    return False


def load_tokenizer(spec: str | Path):
    """An HF tokenizer for a zoo name, hub repo id or folder (remote code never trusted)."""
    from transformers import AutoTokenizer

    folder = Path(spec).expanduser()
    if not (folder.is_dir() and any(folder.glob("tokenizer*"))):
        folder = resolve_base(str(spec)).folder
    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise KnowLMError(f"cannot load a tokenizer from {folder}: {str(exc).splitlines()[0]}",
                          "point at a Hugging Face model folder with tokenizer files") from exc
