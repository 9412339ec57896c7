"""What the user named, as Hugging Face weights on disk: a zoo name, a hub repo id or a folder, plus its LoRA.

:func:`knowlm_local.store.resolve` is the first stop. It prefers a finished
GGUF for a zoo name, which is what ``chat`` wants but not what a converter
can read, so for zoo cards and repo ids the HF cache snapshot (or the
ModelScope copy) is looked up directly. A LoRA card brings its base card
along; a local adapter folder names its base in ``adapter_config.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from knowlm_local.errors import KnowLMError
from knowlm_local.zoo import ModelCard


@dataclass
class Source:
    """HF weights on disk and what provenance should say about them."""

    label: str  # the store name outputs are filed under
    folder: Path
    card: ModelCard | None = None
    repo: str | None = None
    revision: str | None = None
    lora: Path | None = None  # an adapter to merge (from a LoRA card or --lora)
    lora_card: ModelCard | None = None
    extra: dict = field(default_factory=dict)

    def record(self) -> dict:
        commit = self.folder.name if self.folder.parent.name == "snapshots" else None
        return {
            "spec": self.label,
            "path": str(self.folder.resolve()),
            "repo": self.repo,
            "revision": self.revision,
            "commit": commit,
            "card": self.card.name if self.card else None,
        }


def _installed_folder(card: ModelCard | None, repo: str, revision: str | None) -> Path | None:
    """The HF-format copy of ``repo`` (ModelScope download or HF cache snapshot), never a GGUF."""
    from knowlm_local.store import classify_dir, hf_snapshot, modelscope_dir

    candidates = []
    if card is not None and card.modelscope_repo:
        candidates.append(modelscope_dir(card.modelscope_repo))
    snap = hf_snapshot(repo, revision)
    if snap is not None:
        candidates.append(snap)
    for folder in candidates:
        try:
            if folder.is_dir() and classify_dir(folder) in ("hf", "lora"):
                return folder
        except KnowLMError:
            continue
    return None


def _looks_local(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") != 1 or Path(name).exists()


def resolve_source(spec: str, revision: str | None = None) -> Source:
    """Resolve ``spec`` to HF weights (or a LoRA adapter with its base); an error naming the fix otherwise."""
    from knowlm_local.store import classify_dir
    from knowlm_local.zoo import find_card

    spec = spec.strip()
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file():
            raise KnowLMError(
                f"{path} is a file; the converter reads Hugging Face model folders",
                "pass the folder with config.json and the weights (a GGUF is already converted)",
            )
        kind = classify_dir(path)
        if kind == "gguf":
            raise KnowLMError(
                f"{path} holds GGUF files, which are already converted",
                "pass the Hugging Face folder it came from, or use the GGUF directly with `chat -m`",
            )
        if kind == "lora":
            return _adapter_source(path, None)
        return Source(path.resolve().name, path)
    if spec.lower().endswith(".gguf") or spec.startswith((".", "/", "~")):
        raise KnowLMError(f"no such file or folder: {spec}", "check the path")
    name = spec.partition(":")[0]
    card = find_card(name)
    if card is not None:
        if card.embedded:  # shipped as a GGUF only: its HF export (made once) is the base to merge into
            from knowlm_local.train.base import export_embedded

            return Source(card.name, export_embedded(), card=card, repo=card.hf_repo, revision=card.revision)
        if card.format == "gguf":
            raise KnowLMError(
                f"{card.name} is published as a GGUF already; there is nothing to convert",
                f"use it directly: knowlm-local chat -m {card.name}",
            )
        folder = _installed_folder(card, card.hf_repo, revision or card.revision)
        if folder is None:
            raise KnowLMError(
                f"{card.name} is not downloaded (no Hugging Face copy in the cache)",
                f"run: knowlm-local download {card.name}",
            )
        if card.is_lora:
            return _adapter_source(folder, card, revision)
        return Source(card.name, folder, card=card, repo=card.hf_repo, revision=revision or card.revision)
    if name.count("/") == 1 and all(name.split("/")):
        folder = _installed_folder(None, name, revision)
        if folder is None:
            raise KnowLMError(f"{name} is not in the local cache", f"run: knowlm-local download {name}")
        if classify_dir(folder) == "lora":
            return _adapter_source(folder, None, revision, repo=name)
        return Source(name, folder, repo=name, revision=revision)
    from knowlm_local.zoo import unknown_model_error

    raise unknown_model_error(name)


def _adapter_source(
    adapter: Path, card: ModelCard | None, revision: str | None = None, repo: str | None = None
) -> Source:
    """An adapter given as the source: find its base (the card's ``base``, else adapter_config's)."""
    if card is not None:
        base = resolve_source(card.base)
        base.lora, base.lora_card = adapter, card
        base.label = card.name
        base.extra = {"adapter_repo": card.hf_repo, "adapter_revision": revision or card.revision}
        return base
    from knowlm_local.jsonio import read_json

    cfg = read_json(adapter / "adapter_config.json", what="adapter config",
                    hint="the adapter download is damaged: download it again")
    named = str(cfg.get("base_model_name_or_path") or "")
    if not named:
        raise KnowLMError(
            f"{adapter} is a LoRA adapter that does not name its base model",
            f"pass the base explicitly: knowlm-local convert BASE --lora {adapter}",
        )
    try:
        base = resolve_source(named)
    except KnowLMError as exc:
        raise KnowLMError(
            f"{adapter} is a LoRA adapter for {named}, which is not available here ({exc.message})",
            f"download it, or pass the base explicitly: knowlm-local convert BASE --lora {adapter}",
        ) from exc
    base.lora = adapter
    base.label = f"{base.label}-{(repo or adapter.resolve().name).split('/')[-1]}"
    base.extra = {"adapter_repo": repo}
    return base


def check_base_name(adapter_base: str, source: Source) -> None:
    """Refuse an adapter whose ``base_model_name_or_path`` names another hub model than the base in use."""
    from knowlm_local.zoo import find_card

    if not adapter_base or _looks_local(adapter_base):
        return
    named_card = find_card(adapter_base)
    ours = source.card
    known = {
        n.lower() for n in ((ours.hf_repo, ours.modelscope_repo, ours.name, *ours.aliases) if ours else ())
    }
    if source.repo:
        known.add(source.repo.lower())
    if not known:
        return  # a local base folder: nothing to compare the name with (shapes are still checked)
    same = adapter_base.lower() in known or (
        named_card is not None and ours is not None and named_card.name == ours.name
    )
    if not same:
        raise KnowLMError(
            f"the adapter was trained on {adapter_base}, "
            f"but the base model here is {ours.name if ours else source.repo}",
            "pass the base the adapter was trained on; if these are the same weights under another name, "
            "add --skip-base-check",
        )
