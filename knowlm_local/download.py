"""`knowlm-local download`: fetch a zoo model or any hub repo into the Hugging Face cache.

huggingface_hub does the transfer (the cache layout, progress bars, tokens
from ``HF_TOKEN`` or ``hf auth login``), with missing files fetched through
:mod:`knowlm_local.resume` so an interrupted run continues where it stopped.
This module adds what a KnowLM user needs around it: zoo names, the card's
file patterns and revision, a LoRA adapter's base model, a disk-space check
before the first byte, mirrors (``HF_ENDPOINT``, e.g. https://hf-mirror.com)
and ModelScope, and one-line errors for the usual failures (offline, not
found, gated).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from knowlm_local.errors import KnowLMError
from knowlm_local.io_utils import check_space
from knowlm_local.resume import fetch_blobs
from knowlm_local.store import hf_cache, modelscope_dir
from knowlm_local.zoo import ModelCard, find_card, unknown_model_error


@dataclass(frozen=True)
class Target:
    """What to fetch: a repo, a revision and file patterns (from the card or the user)."""

    repo: str
    revision: str | None
    include: list[str] | None
    exclude: list[str] | None
    card: ModelCard | None


def plan_target(spec: str, revision: str | None = None, include: list[str] | None = None,
                exclude: list[str] | None = None) -> Target:
    """Turn a zoo name or ``owner/name`` into a :class:`Target`."""
    card = find_card(spec)
    if card is not None:
        files = list(card.files) or None
        return Target(card.hf_repo, revision or card.revision, include or files, exclude, card)
    if spec.count("/") == 1 and all(spec.split("/")):
        return Target(spec, revision, include, exclude, None)
    raise unknown_model_error(spec)


def _endpoint(endpoint: str | None) -> str:
    return (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _hub_error(exc: Exception, target: Target, endpoint: str) -> KnowLMError:
    """Map huggingface_hub / network exceptions to one-line errors with a fix."""
    from huggingface_hub import errors as hf_errors

    if type(exc).__name__ == "DryRunError" and exc.__cause__ is not None:
        exc = exc.__cause__  # a dry run wraps the real reason (not found, gated, offline)
    name = type(exc).__name__
    if isinstance(exc, hf_errors.GatedRepoError):
        return KnowLMError(f"{target.repo} is gated: accept its terms on the hub first",
                           "then pass --token or run `hf auth login`")
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        return KnowLMError(f"{target.repo} was not found on {endpoint} (or it is private)",
                           "check the repo id; for a private repo pass --token")
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return KnowLMError(f"revision {target.revision!r} does not exist in {target.repo}",
                           "pass an existing branch, tag or commit with --revision")
    if isinstance(exc, (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled)) or \
            name in ("DryRunError", "ConnectError", "ConnectTimeout", "ReadTimeout", "TimeoutException"):
        return KnowLMError(
            f"cannot reach {endpoint} to download {target.repo}",
            "check your network; in mainland China try HF_ENDPOINT=https://hf-mirror.com or --source modelscope",
        )
    if isinstance(exc, hf_errors.HfHubHTTPError):
        return KnowLMError(f"the hub refused the download of {target.repo}: {exc}".splitlines()[0],
                           "check the repo id, --revision and --token")
    return KnowLMError(f"download of {target.repo} failed: {name}: {exc}".splitlines()[0],
                       "run the command again: finished files are kept and partial ones resume")


def hf_download(target: Target, endpoint: str | None = None, token: str | None = None,
                cache_dir: Path | None = None, progress: bool = True) -> Path:
    """Download ``target`` into the HF cache after checking the disk has room; returns the snapshot folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    url = _endpoint(endpoint)
    cache = cache_dir or hf_cache()
    common = dict(repo_id=target.repo, revision=target.revision, allow_patterns=target.include,
                  ignore_patterns=target.exclude, endpoint=url, token=token, cache_dir=str(cache))
    disable_progress_bars()
    try:
        plan = snapshot_download(dry_run=True, **common)
    except Exception as exc:
        raise _hub_error(exc, target, url) from exc
    finally:
        enable_progress_bars()
    if not plan:
        raise KnowLMError(f"no files of {target.repo} match the include/exclude patterns",
                          "loosen --include / --exclude")
    needed = sum((f.file_size or 0) for f in plan if f.will_download)
    check_space(cache, needed, target.repo, "free some space, or point HF_HOME (or HF_HUB_CACHE) at a bigger disk")
    if not progress:
        disable_progress_bars()
    try:
        # Missing files first, resumably (see knowlm_local.resume); then snapshot_download only links them.
        fetch_blobs(target.repo, plan[0].commit_hash, [f.filename for f in plan if f.will_download],
                    cache, url, token)
        folder = snapshot_download(**common)
    except KnowLMError:
        raise
    except Exception as exc:
        raise _hub_error(exc, target, url) from exc
    finally:
        enable_progress_bars()
    return Path(folder)


def modelscope_download(target: Target, revision: str | None = None) -> Path:
    """Download from ModelScope (needs the optional `modelscope` package) into the store."""
    try:
        from modelscope.hub.snapshot_download import snapshot_download
    except ImportError:
        raise KnowLMError("downloads from ModelScope need the modelscope package",
                          'pip install "knowlm-local[modelscope]"') from None
    repo = target.card.modelscope_repo if target.card else target.repo
    if not repo:
        raise KnowLMError(f"{target.card.name if target.card else target.repo} has no ModelScope mirror",
                          "use --source hf (with HF_ENDPOINT=https://hf-mirror.com if the hub is slow)")
    dest = modelscope_dir(repo)
    try:
        folder = snapshot_download(repo, revision=revision or "master", local_dir=str(dest),
                                   allow_patterns=target.include, ignore_patterns=target.exclude)
    except Exception as exc:  # modelscope raises many types; all mean the same to the user
        raise KnowLMError(f"ModelScope download of {repo} failed: {exc}".splitlines()[0],
                          "check the network and the repo id; finished files are kept") from exc
    return Path(folder)


def download(spec: str, revision: str | None = None, include: list[str] | None = None,
             exclude: list[str] | None = None, endpoint: str | None = None, token: str | None = None,
             source: str = "hf", with_base: bool = True, progress: bool = True,
             say=print) -> list[Path]:
    """What `knowlm-local download` does; returns the folders fetched (a LoRA's base first)."""
    from knowlm_local.embedded import embedded_gguf

    target = plan_target(spec, revision, include, exclude)
    card = target.card
    if card is not None and card.embedded:
        path = embedded_gguf(card)
        say(f"{card.name} is embedded in the installed package; nothing to download ({path})")
        return [path]
    fetched: list[Path] = []
    if card is not None and card.is_lora and with_base:
        say(f"{card.name} is a LoRA adapter; fetching its base model {card.base} first")
        fetched += download(card.base, endpoint=endpoint, token=token, source=source, progress=progress, say=say)
    if source == "modelscope":
        folder = modelscope_download(target, revision)
    elif source == "hf":
        folder = hf_download(target, endpoint=endpoint, token=token, progress=progress)
    else:
        raise KnowLMError(f"unknown source {source!r}", "use --source hf or --source modelscope")
    say(f"{target.repo} -> {folder}")
    return fetched + [folder]
