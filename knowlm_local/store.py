"""Where models live on disk, and how a name the user typed becomes files.

Two places hold models:

* the Hugging Face cache (``HF_HUB_CACHE``) for downloads, shared with every
  other HF tool, so a model downloaded once is never downloaded again;
* the store, ``KNOWLM_HOME`` (default: the user cache dir), for what we make:
  ``models/<slug>/<slug>-<quant>.gguf`` plus ``provenance.json``, and
  ModelScope downloads under ``modelscope/<owner>/<name>``.

A name resolves, in order: a local path (GGUF file, GGUF folder, HF folder,
LoRA adapter folder); a zoo name or alias (``oneke``, ``oneke:q4_k_m``); a hub
repo id (``owner/name``). Nothing here touches the network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from knowlm_local.errors import KnowLMError
from knowlm_local.zoo import ModelCard, find_card, unknown_model_error

# Preferred quantization when a model has several GGUF files and none was asked for:
# the usual quality/size sweet spot first.
QUANT_PREFERENCE = ("q4_k_m", "q5_k_m", "q4_k_s", "q6_k", "q8_0", "q4_0", "f16", "bf16", "f32")
WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.pt", "*.pth")


@dataclass(frozen=True)
class ResolvedModel:
    """A model name turned into files."""

    name: str
    kind: str  # "gguf" (a file), "hf" (a transformers folder) or "lora" (a PEFT adapter folder)
    path: Path
    card: ModelCard | None = None
    note: str = ""
    adapter: Path | None = None  # a GGUF LoRA adapter that belongs to this model (the built-in IE model)


def home() -> Path:
    """``KNOWLM_HOME`` or ``<user cache dir>/knowlm-local``."""
    env = os.environ.get("KNOWLM_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("knowlm-local", appauthor=False))


def hf_cache() -> Path:
    """The Hugging Face hub cache, read from the environment at call time (tests and users may change it)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "huggingface"
    )
    return Path(hf_home).expanduser() / "hub"


def slug(name: str) -> str:
    """A folder name for a model: zoo names stay, ``owner/name`` becomes ``owner--name``."""
    return name.strip().strip("/").replace("/", "--").replace(":", "-")


def model_dir(name: str) -> Path:
    return home() / "models" / slug(name)


def modelscope_dir(repo: str) -> Path:
    return home() / "modelscope" / repo


def gguf_quant(path: Path) -> str:
    """The quant suffix of a store GGUF name (``oneke-q4_k_m.gguf`` -> ``q4_k_m``)."""
    stem = path.stem.lower()
    for quant in sorted(QUANT_PREFERENCE, key=len, reverse=True):
        if stem.endswith(quant):
            return quant
    return stem.rsplit("-", 1)[-1] if "-" in stem else stem


def pick_gguf(files: list[Path], quant: str | None = None) -> Path | None:
    """One GGUF among several: the asked quant, else the preferred order, else the first by name."""
    ggufs = sorted(p for p in files if p.suffix.lower() == ".gguf")
    if not ggufs:
        return None
    if quant:
        for p in ggufs:
            if gguf_quant(p) == quant.lower() or quant.lower() in p.stem.lower():
                return p
        return None
    for q in QUANT_PREFERENCE:
        for p in ggufs:
            if gguf_quant(p) == q:
                return p
    return ggufs[0]


def classify_dir(path: Path) -> str:
    """What kind of model a folder holds; an error that says what is missing otherwise."""
    if (path / "adapter_config.json").is_file():
        return "lora"
    if any(path.glob("*.gguf")):
        return "gguf"
    if (path / "config.json").is_file() and any(any(path.glob(g)) for g in WEIGHT_GLOBS):
        return "hf"
    if (path / "config.json").is_file():
        raise KnowLMError(
            f"{path} has a config.json but no weights (*.safetensors or *.bin)",
            "the download may be incomplete: run `knowlm-local download` again",
        )
    raise KnowLMError(
        f"{path} holds no model: no *.gguf, no config.json with weights, no adapter_config.json",
        "point at a GGUF file or a Hugging Face model folder",
    )


def _resolve_path(path: Path, quant: str | None) -> ResolvedModel:
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise KnowLMError(f"{path} is not a GGUF file", "pass a .gguf file or a model folder")
        return ResolvedModel(path.name, "gguf", path)
    kind = classify_dir(path)
    if kind == "gguf":
        chosen = pick_gguf(list(path.glob("*.gguf")), quant)
        if chosen is None:
            raise KnowLMError(f"no {quant} GGUF in {path}", f"available: {_list_ggufs(path)}")
        return ResolvedModel(chosen.name, "gguf", chosen)
    return ResolvedModel(path.name, kind, path)


def _list_ggufs(folder: Path) -> str:
    return ", ".join(sorted(p.name for p in folder.glob("*.gguf"))) or "none"


def hf_snapshot(repo: str, revision: str | None = None) -> Path | None:
    """The cached snapshot folder of a hub repo, or None; never downloads.

    Reads the documented cache layout (``refs/<revision>`` -> ``snapshots/<commit>``)
    rather than calling ``snapshot_download(local_files_only=True)``, which
    refuses a snapshot downloaded with include patterns as incomplete.
    """
    from huggingface_hub.file_download import repo_folder_name

    root = hf_cache() / repo_folder_name(repo_id=repo, repo_type="model")
    revision = revision or "main"
    ref = root / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    folder = root / "snapshots" / commit
    return folder if folder.is_dir() and any(folder.iterdir()) else None


def converted(name: str) -> list[Path]:
    """GGUF files the converter put in the store for ``name``."""
    folder = model_dir(name)
    return sorted(folder.glob("*.gguf")) if folder.is_dir() else []


def _from_store(label: str, quant: str | None, card: ModelCard | None) -> ResolvedModel | None:
    """The store's conversion of ``label`` (the asked quant or the preferred one), or None."""
    store_files = converted(label)
    chosen = pick_gguf(store_files, quant)
    if chosen:
        return ResolvedModel(f"{label}:{gguf_quant(chosen)}", "gguf", chosen, card)
    if quant and store_files:
        raise KnowLMError(f"{label} has no {quant} conversion",
                          f"available: {', '.join(gguf_quant(p) for p in store_files)}")
    return None


def _resolve_repo(repo: str, revision: str | None, quant: str | None, card: ModelCard | None,
                  want: str = "any") -> ResolvedModel | None:
    """A store conversion, a ModelScope download or an HF cache snapshot of ``repo``.

    ``want="hf"`` skips GGUF files (the store's conversions and GGUF repos): ``--backend hf`` runs the
    Hugging Face weights even where a conversion of them exists.
    """
    label = card.name if card else repo
    stored = _from_store(label, quant, card) if want != "hf" else None
    if stored:
        return stored
    candidates = []
    ms = card.modelscope_repo if card else repo
    if ms and modelscope_dir(ms).is_dir():
        candidates.append(modelscope_dir(ms))
    snap = hf_snapshot(repo, revision)
    if snap is not None:
        candidates.append(snap)
    for folder in candidates:
        try:
            kind = classify_dir(folder)
        except KnowLMError:
            continue
        if kind == "gguf":
            chosen = pick_gguf(list(folder.glob("*.gguf")), quant) if want != "hf" else None
            if chosen:
                return ResolvedModel(f"{label}:{gguf_quant(chosen)}", "gguf", chosen, card)
            continue
        return ResolvedModel(label, kind, folder, card)
    return None


def resolve(spec: str, revision: str | None = None, want: str = "any") -> ResolvedModel:
    """Turn what the user typed into a model on disk (see the module docstring for the order).

    ``want="hf"``: a zoo name or repo id resolves to its Hugging Face weights, never to a GGUF.
    """
    from knowlm_local.embedded import embedded_gguf

    spec = spec.strip()
    if not spec:
        raise KnowLMError("empty model name", "run `knowlm-local models` to list the zoo")
    path = Path(spec).expanduser()
    if path.exists():
        return _resolve_path(path, None)
    if spec.lower().endswith(".gguf") or spec.startswith((".", "/", "~")):
        raise KnowLMError(f"no such file or folder: {spec}", "check the path")
    name, _, quant = spec.partition(":")
    quant = quant or None
    card = find_card(name)
    if card is not None and card.embedded and want == "hf":
        if card.adapter_file:
            raise KnowLMError(f"{card.name} is the built-in model plus a GGUF LoRA adapter, which only llama.cpp "
                              "applies", f"leave --backend out, or run the plain model: -m {card.base or 'smollm2'} "
                              "--backend hf")
        from knowlm_local.train.base import export_embedded

        return ResolvedModel(card.name, "hf", export_embedded(), card,
                             note="note: the built-in model's weights, exported once from its GGUF to a Hugging Face "
                                  "folder in the store (float32)")
    if card is not None and card.embedded:
        from knowlm_local.zoo import adapter_path

        adapter = adapter_path(card) if card.adapter_file else None
        return ResolvedModel(card.name, "gguf", embedded_gguf(card), card, note=embedded_note(card), adapter=adapter)
    if card is not None:
        found = _resolve_repo(card.hf_repo, revision or card.revision, quant, card, want)
        if found:
            return found
        if want == "hf" and card.format == "gguf":
            raise KnowLMError(f"{card.name} is published as GGUF files only; the transformers backend needs "
                              "Hugging Face weights", "run it with llama.cpp: leave --backend out")
        if want == "hf" and converted(card.name):
            raise KnowLMError(f"only GGUF conversions of {card.name} are here; --backend hf needs its Hugging Face "
                              "weights", f"run: knowlm-local download {card.name} (or leave --backend out)")
        steps = f"knowlm-local download {card.name}"
        if card.format != "gguf":
            steps += f" && knowlm-local convert {card.name} --quant q4_k_m"
        raise KnowLMError(f"{card.name} is not installed", f"run: {steps}")
    if "/" in name and name.count("/") == 1:
        found = _resolve_repo(name, revision, quant, None, want)
        if found:
            return found
        raise KnowLMError(f"{name} is not in the local cache", f"run: knowlm-local download {name}")
    stored = _from_store(name, quant, None)  # a conversion of a local folder, stored under its own name
    if stored:
        return stored
    raise unknown_model_error(name)


def default_model(purpose: str = "chat") -> ResolvedModel:
    """What a command uses without ``--model``: ``KNOWLM_MODEL``, else the newest store GGUF, else the built-in
    model for ``purpose`` (for ``extract``: the built-in extraction model, unless a store GGUF is newer)."""
    from knowlm_local.zoo import adapter_path, embedded_card

    env = os.environ.get("KNOWLM_MODEL")
    if env:
        return resolve(env)
    root = home() / "models"
    ggufs = sorted(root.glob("*/*.gguf"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    built_in = embedded_card(purpose)
    if ggufs and built_in.adapter_file and purpose != "chat":
        shipped = adapter_path(built_in).stat().st_mtime
        ggufs = [p for p in ggufs if p.stat().st_mtime > shipped]
    if ggufs:
        newest = ggufs[-1]
        card = find_card(newest.parent.name)
        return ResolvedModel(
            f"{newest.parent.name}:{gguf_quant(newest)}", "gguf", newest, card,
            note=f"using {newest.parent.name}:{gguf_quant(newest)}, the newest model in the store (choose with --model)",
        )
    return resolve(built_in.name)


def embedded_note(card: ModelCard) -> str:
    if card.adapter_file:
        return (f"note: using the built-in extraction model {card.name} ({card.parameters}"
                + (f"; {card.measured}" if card.measured else "") + "); for real work run `knowlm-local download oneke`")
    return (
        f"note: {card.display_name} is a tiny demo model ({card.parameters}, mostly English); "
        "for real work run `knowlm-local download oneke`"
    )
