"""The on-disk token store of packed pretraining samples, and the seeded mixture a trainer reads.

A store is a folder of three files:

* ``data.bin``: every kept sample's token ids, back to back, little-endian
  ``uint16`` when the vocabulary fits (ids < 65,536), else ``uint32``;
* ``data.idx``: a 32-byte header (magic ``b"KNOWLMPT"``, format version
  ``u32``, dtype code ``u32`` (1 = uint16, 2 = uint32), sample count ``u64``,
  token count ``u64``), then ``u64[samples]`` token offsets into ``data.bin``
  and ``u32[samples]`` lengths;
* ``meta.json``: how it was made (tokenizer, max_len, counts) and the
  sources: ``{"name": {"first": i, "end": j, "weight": w, ...}}``, a
  half-open sample range per input file.

:class:`TokenStore` maps both binary files with ``np.memmap`` only when a
sample is first read, so opening a terabyte store costs nothing and a forked
data-loader worker shares the pages. :class:`MixedDataset` is an epoch of one
or more stores with each source repeated or subsampled by its weight, in an
order fixed by the seed: resuming on any number of nodes is a matter of
skipping to the same index, there is no reader state to restore.
"""

from __future__ import annotations

import json
import struct
import zlib
from array import array
from pathlib import Path

import numpy as np

from knowlm_local.errors import KnowLMError
from knowlm_local.io_utils import write_error

MAGIC = b"KNOWLMPT"
VERSION = 1
HEADER = struct.Struct("<8sIIQQ")  # magic, version, dtype code, samples, tokens (32 bytes)
DTYPES = {1: np.dtype("<u2"), 2: np.dtype("<u4")}
CODES = {"uint16": 1, "uint32": 2}
FORMAT = "knowlm-pretrain"
_REBUILD = "prepare it again with knowlm-local prepare-pretrain"


def dtype_for(vocab_size: int) -> str:
    """``"uint16"`` when every id of a ``vocab_size`` vocabulary fits in 16 bits, else ``"uint32"``."""
    if vocab_size > 2**32:
        raise KnowLMError(f"a vocabulary of {vocab_size:,} tokens does not fit 32-bit ids", "check the tokenizer")
    return "uint16" if vocab_size <= 2**16 else "uint32"


class TokenWriter:
    """Appends samples to ``folder/data.bin`` as they come; the index and meta.json are written by :meth:`close`.

    Only the index (12 bytes a sample) and a write buffer stay in memory.
    """

    def __init__(self, folder: Path, dtype: str, buffer_tokens: int = 1 << 16) -> None:
        if dtype not in CODES:
            raise ValueError(f"unsupported token dtype {dtype!r}")
        self.folder = Path(folder)
        self.dtype = dtype
        self._limit = 2 ** (16 if dtype == "uint16" else 32)
        self._np = DTYPES[CODES[dtype]]
        self._buffer: list[int] = []
        self._buffer_tokens = buffer_tokens
        self.offsets = array("Q")
        self.lengths = array("I")
        self.tokens = 0
        try:
            self._fh = open(self.folder / "data.bin", "wb")  # noqa: SIM115 (open until close/abort)
        except OSError as exc:
            raise write_error(exc, self.folder / "data.bin") from None

    @property
    def count(self) -> int:
        return len(self.lengths)

    def add(self, tokens: list[int]) -> int:
        """Append one sample; its index in the store."""
        self.offsets.append(self.tokens)
        self.lengths.append(len(tokens))
        self.tokens += len(tokens)
        self._buffer.extend(tokens)
        if len(self._buffer) >= self._buffer_tokens:
            self._flush()
        return len(self.lengths) - 1

    def _flush(self) -> None:
        if not self._buffer:
            return
        ids = np.array(self._buffer, dtype=np.int64)
        self._buffer = []
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= self._limit:
            bad = low if low < 0 else high
            raise KnowLMError(f"token id {bad} does not fit the store's {self.dtype} ids",
                              "the tokenizer's vocab_size is smaller than the ids it produces: check the tokenizer")
        try:
            self._fh.write(ids.astype(self._np).tobytes())
        except OSError as exc:
            raise write_error(exc, self.folder / "data.bin") from None

    def close(self, meta: dict) -> None:
        """Finish data.bin, then write data.idx and meta.json (with the format fields filled in)."""
        try:
            self._flush()
            self._fh.close()
            with open(self.folder / "data.idx", "wb") as fh:
                fh.write(HEADER.pack(MAGIC, VERSION, CODES[self.dtype], self.count, self.tokens))
                fh.write(np.frombuffer(self.offsets, dtype=np.uint64).astype("<u8").tobytes())
                fh.write(np.frombuffer(self.lengths, dtype=np.uint32).astype("<u4").tobytes())
            meta = {"format": FORMAT, "version": VERSION, "dtype": self.dtype,
                    "samples": self.count, "tokens": self.tokens, **meta}
            (self.folder / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2) + "\n",
                                                   encoding="utf-8")
        except OSError as exc:
            raise write_error(exc, self.folder) from None

    def abort(self) -> None:
        self._buffer = []
        self._fh.close()


class TokenStore:
    """A packed store read lazily: ``len(store)`` samples, ``store[i]`` an int64 array of token ids.

    ``sources`` maps each source (input file stem) to its half-open sample
    range ``(first, end)``, so ``range(*store.sources[name])`` are its samples.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise KnowLMError(f"{self.path} is not a pretraining token store (no meta.json)",
                              "point at the folder prepare-pretrain wrote")
        from knowlm_local.jsonio import read_json

        self.meta = read_json(meta_path, "token store meta.json", hint=_REBUILD)
        if self.meta.get("format") != FORMAT or self.meta.get("dtype") not in CODES:
            raise KnowLMError(f"{meta_path} does not describe a {FORMAT} store", _REBUILD)
        idx = self.path / "data.idx"
        try:
            with open(idx, "rb") as fh:
                head = fh.read(HEADER.size)
        except OSError as exc:
            raise KnowLMError(f"cannot read {idx}: {exc.strerror}", _REBUILD) from None
        if len(head) < HEADER.size or head[:8] != MAGIC:
            raise KnowLMError(f"{idx} is not a token index (bad magic)", _REBUILD)
        _, version, code, samples, tokens = HEADER.unpack(head)
        if version != VERSION or code not in DTYPES:
            raise KnowLMError(f"{idx} has format version {version} / dtype code {code}, which this version "
                              "cannot read", "upgrade knowlm-local, or " + _REBUILD)
        if DTYPES[code] != DTYPES[CODES[self.meta["dtype"]]] or samples != self.meta.get("samples"):
            raise KnowLMError(f"{idx} does not match {meta_path}", _REBUILD)
        self.dtype = DTYPES[code]
        self._samples, self._tokens = int(samples), int(tokens)
        self._check_size(idx, HEADER.size + 12 * self._samples)
        self._check_size(self.path / "data.bin", self._tokens * self.dtype.itemsize)
        self._data = self._offsets = self._lengths = None  # mapped on first read

    def _check_size(self, path: Path, expected: int) -> None:
        size = path.stat().st_size if path.is_file() else -1
        if size != expected:
            raise KnowLMError(f"{path} holds {size} bytes, {expected} expected: the store is incomplete or damaged",
                              _REBUILD)

    def _open(self) -> None:
        idx = self.path / "data.idx"
        n = self._samples
        self._offsets = np.memmap(idx, dtype="<u8", mode="r", offset=HEADER.size, shape=(n,)) if n else np.zeros(0, "<u8")
        self._lengths = (np.memmap(idx, dtype="<u4", mode="r", offset=HEADER.size + 8 * n, shape=(n,))
                         if n else np.zeros(0, "<u4"))
        self._data = (np.memmap(self.path / "data.bin", dtype=self.dtype, mode="r", shape=(self._tokens,))
                      if self._tokens else np.zeros(0, self.dtype))

    def __len__(self) -> int:
        return self._samples

    @property
    def num_tokens(self) -> int:
        return self._tokens

    @property
    def sources(self) -> dict[str, tuple[int, int]]:
        return {name: (int(s["first"]), int(s["end"])) for name, s in self.meta.get("sources", {}).items()}

    @property
    def weights(self) -> dict[str, float]:
        return {name: float(s.get("weight", 1.0)) for name, s in self.meta.get("sources", {}).items()}

    def _at(self, i: int) -> int:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"a store is indexed by sample number, not {type(i).__name__}")
        j = int(i) + (self._samples if i < 0 else 0)
        if not 0 <= j < self._samples:
            raise IndexError(f"sample {i} is out of range for a store of {self._samples}")
        if self._data is None:
            self._open()
        return j

    def view(self, i: int) -> np.ndarray:
        """Sample ``i`` as a read-only view of the mapped file, in the stored dtype (no copy)."""
        i = self._at(i)
        start = int(self._offsets[i])
        return self._data[start:start + int(self._lengths[i])]

    def __getitem__(self, i: int) -> np.ndarray:
        """Sample ``i`` as a fresh int64 array (ready for ``torch.from_numpy``)."""
        return np.array(self.view(i), dtype=np.int64)

    def length(self, i: int) -> int:
        j = self._at(i)  # maps the files first
        return int(self._lengths[j])


class MixedDataset:
    """One epoch over several sources, each repeated or subsampled by its weight, in a seeded order.

    A weight ``w`` puts every sample of its source ``floor(w)`` times in the
    epoch, plus a seeded ``round(frac(w) * n)`` of them once more (2.0: each
    twice; 0.5: a seeded half; 0: none). ``weights`` overrides the weights
    stored in the stores' meta.json (1.0 where unset). The same seed gives the
    same order everywhere; use ``seed + epoch`` for a fresh order each epoch.
    """

    def __init__(self, stores: list[TokenStore] | TokenStore, weights: dict[str, float] | None = None,
                 seed: int = 0) -> None:
        self.stores = [stores] if isinstance(stores, TokenStore) else list(stores)
        if not self.stores:
            raise KnowLMError("a mixed dataset needs at least one token store", "pass the prepared store folders")
        ranges: dict[str, tuple[int, int, int]] = {}  # name -> (store number, first, end)
        stored: dict[str, float] = {}
        for k, store in enumerate(self.stores):
            sources = store.sources or {store.path.name: (0, len(store))}
            for name, (first, end) in sources.items():
                if name in ranges:
                    raise KnowLMError(f"source {name!r} is in two of the stores mixed",
                                      "rename one of the input files and prepare its store again")
                ranges[name] = (k, first, end)
                stored[name] = store.weights.get(name, 1.0)
        unknown = sorted(set(weights or {}) - set(ranges))
        if unknown:
            raise KnowLMError(f"no source named {', '.join(unknown)} in the stores",
                              f"the sources are: {', '.join(ranges)}")
        self.weights = {**stored, **(weights or {})}
        bases = np.cumsum([0] + [len(s) for s in self.stores])
        self._bases = bases
        parts, self.counts = [], {}
        for name, (k, first, end) in ranges.items():
            w = float(self.weights[name])
            if not w >= 0:
                raise KnowLMError(f"the weight of source {name!r} is {w}", "weights must be 0 or more")
            ids = np.arange(bases[k] + first, bases[k] + end, dtype=np.int64)
            whole, frac = int(w), w - int(w)
            rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
            extra = rng.choice(ids, size=round(frac * len(ids)), replace=False) if len(ids) else ids
            part = np.concatenate([np.tile(ids, whole), np.sort(extra)])
            self.counts[name] = len(part)
            parts.append(part)
        order = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        np.random.default_rng(seed).shuffle(order)
        self._order = order

    def __len__(self) -> int:
        return len(self._order)

    def locate(self, i: int) -> tuple[int, int]:
        """``(store number, sample number)`` of item ``i`` of the epoch."""
        g = int(self._order[i])
        k = int(np.searchsorted(self._bases, g, side="right")) - 1
        return k, g - int(self._bases[k])

    def __getitem__(self, i: int) -> np.ndarray:
        k, j = self.locate(i)
        return self.stores[k][j]
