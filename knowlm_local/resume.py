"""Resumable file downloads into the Hugging Face cache.

huggingface_hub (1.x and 2.x) downloads each file to a *process-unique*
temporary name (huggingface_hub PR #4228), so when a 10 GB shard is
interrupted, the next run starts that shard from byte zero. For KnowLM's 26 GB
checkpoints on slow links that is not acceptable, so before handing over to
``snapshot_download`` we fetch every missing file ourselves, with
huggingface_hub's own ``http_get`` and a byte range, to a stable partial name
``blobs/<etag>.knowlm-partial``; once complete and checked it is renamed to
``blobs/<etag>``, exactly where huggingface_hub would have put it. The cache
stays the standard layout: ``snapshot_download`` then only adds the snapshot
links.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

from knowlm_local.errors import KnowLMError

PARTIAL_SUFFIX = ".knowlm-partial"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(16 * 1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_blobs(repo: str, commit: str, filenames: Iterable[str], cache_dir: Path, endpoint: str,
                token: str | None = None) -> int:
    """Download ``filenames`` of ``repo@commit`` into the cache's blob store, resuming partial files.

    Returns the number of bytes fetched in this call. LFS files (whose ETag is
    their SHA-256) are verified before they enter the cache.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get, repo_folder_name
    from huggingface_hub.utils import build_hf_headers

    blobs = Path(cache_dir) / repo_folder_name(repo_id=repo, repo_type="model") / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    fetched = 0
    for name in filenames:
        url = hf_hub_url(repo, name, revision=commit, endpoint=endpoint)
        meta = get_hf_file_metadata(url, token=token, endpoint=endpoint)
        if not meta.etag:
            raise KnowLMError(f"the hub sent no ETag for {name}", "try again later or use another endpoint")
        blob = blobs / meta.etag
        if blob.exists():
            continue
        partial = blob.with_name(blob.name + PARTIAL_SUFFIX)
        have = partial.stat().st_size if partial.exists() else 0
        if meta.size is not None and have > meta.size:  # a stale partial of something else
            partial.unlink()
            have = 0
        with open(partial, "ab") as fh:
            http_get(meta.location, fh, resume_size=have, headers=build_hf_headers(token=token),
                     expected_size=meta.size, displayed_filename=name)
        size = partial.stat().st_size
        if meta.size is not None and size != meta.size:
            raise KnowLMError(f"{name}: got {size} bytes, expected {meta.size}",
                              "run the same command again to resume")
        if _SHA256.fullmatch(meta.etag) and _sha256(partial) != meta.etag:
            partial.unlink()
            raise KnowLMError(f"{name} failed its SHA-256 check and was discarded",
                              "run the same command again to download it afresh")
        os.replace(partial, blob)
        fetched += size - have
    return fetched
