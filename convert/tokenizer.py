"""The vocabulary half of a GGUF: SentencePiece (LLaMA, KnowLM, OneKE) or byte-level BPE (SmolLM2, GPT-2).

llama.cpp re-implements both tokenizers, so the GGUF must describe them
exactly: the pieces, their scores or merges, which ids are control tokens,
whether a BOS is added and whether SentencePiece's dummy space prefix is on.
For BPE it also needs ``tokenizer.ggml.pre``, the name of the regex that
splits text before merging. llama.cpp's own converter guesses it by hashing
the token ids of a probe string, which only recognises tokenizers it has
seen; we read the pre-tokenizer that ``tokenizer.json`` declares and map the
known forms to the llama.cpp name implementing the same regex. Anything else
is refused (``tokenizer_pre`` overrides), because a wrong guess silently
changes every prompt's tokens.

Only light libraries are used (sentencepiece, json): the converter must not
pay transformers' memory to read a vocabulary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from knowlm_local.errors import KnowLMError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # gguf.TokenType

# Split regexes as written in tokenizer.json -> llama.cpp pre-tokenizer with the same regex (llama-vocab.cpp).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
KNOWN_SPLITS = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}
SPECIAL_KINDS = ("bos", "eos", "unk", "pad")


@dataclass
class Vocab:
    """Everything ``tokenizer.ggml.*`` needs, gathered before the file is opened."""

    model: str  # "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    pre: str
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    special: dict[str, int] = field(default_factory=dict)
    add_bos: bool | None = None
    add_eos: bool | None = None
    add_space_prefix: bool | None = None
    chat_template: str | list[dict] | None = None
    warnings: list[str] = field(default_factory=list)

    def write(self, writer) -> None:
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        writer.add_token_types(self.types)
        if self.merges:
            writer.add_token_merges(self.merges)
        for kind, token_id in self.special.items():
            getattr(writer, f"add_{kind}_token_id")(token_id)
        if self.add_bos is not None:
            writer.add_add_bos_token(self.add_bos)
        if self.add_eos is not None:
            writer.add_add_eos_token(self.add_eos)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


def read_json(path: Path) -> dict:
    """A JSON file of a model folder; {} when it is absent (most are optional)."""
    if not path.exists():
        return {}
    from knowlm_local.jsonio import read_json as read

    return read(path, what=path.name, hint="the file is damaged: download it again")


def _content(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _added_tokens(folder: Path, tok_json: dict, tok_cfg: dict) -> dict[int, tuple[str, bool]]:
    """id -> (content, special) from tokenizer.json, tokenizer_config.json and added_tokens.json."""
    added: dict[int, tuple[str, bool]] = {}
    for tok in tok_json.get("added_tokens", []):
        added[int(tok["id"])] = (tok["content"], bool(tok.get("special")))
    for key, tok in (tok_cfg.get("added_tokens_decoder") or {}).items():
        added[int(key)] = (tok["content"], bool(tok.get("special")))
    for content, token_id in read_json(folder / "added_tokens.json").items():
        added.setdefault(int(token_id), (content, False))
    return added


def chat_template(folder: Path, tok_cfg: dict) -> str | list[dict] | None:
    """The chat template shipped with the tokenizer: tokenizer_config.json, chat_template.jinja or .json."""
    if tok_cfg.get("chat_template"):
        return tok_cfg["chat_template"]
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    return read_json(folder / "chat_template.json").get("chat_template") or None


def detect_pre(tok_json: dict) -> str:
    """The llama.cpp pre-tokenizer name for a byte-level BPE ``tokenizer.json``; an error if unknown."""
    pre = tok_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if (
        kinds == ["Digits", "ByteLevel"]
        and parts[0].get("individual_digits")
        and parts[1].get("use_regex", True)
    ):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        regex = (parts[0].get("pattern") or {}).get("Regex")
        if regex in KNOWN_SPLITS:
            return KNOWN_SPLITS[regex]
    raise KnowLMError(
        f"unrecognised BPE pre-tokenizer in tokenizer.json ({json.dumps(pre)[:200]})",
        "pass the llama.cpp name of an equivalent pre-tokenizer with --tokenizer-pre "
        "(e.g. gpt-2, llama-bpe, qwen2)",
    )


def _is_byte_level(tok_json: dict) -> bool:
    text = json.dumps({k: tok_json.get(k) for k in ("pre_tokenizer", "decoder")})
    return '"ByteLevel"' in text


def _flags(tok_json: dict, tok_cfg: dict, default_bos: bool) -> tuple[bool, bool]:
    """add_bos/add_eos: the tokenizer config if it says, else the post-processor template, else a default."""
    post = tok_json.get("post_processor") or {}
    steps = post.get("single", []) if post.get("type") == "TemplateProcessing" else []
    kinds = ["A" if "Sequence" in s else "special" for s in steps]
    bos = kinds.index("A") > 0 if "A" in kinds else default_bos
    eos = "A" in kinds and kinds.index("A") < len(kinds) - 1
    if isinstance(tok_cfg.get("add_bos_token"), bool):
        bos = tok_cfg["add_bos_token"]
    if isinstance(tok_cfg.get("add_eos_token"), bool):
        eos = tok_cfg["add_eos_token"]
    return bos, eos


def _specials(lookup: dict[str, int], tok_cfg: dict, config: dict, n_vocab: int) -> dict[str, int]:
    special = {}
    for kind in SPECIAL_KINDS:
        content = _content(tok_cfg.get(f"{kind}_token"))
        token_id = lookup.get(content) if content is not None else None
        if token_id is None:
            value = config.get(f"{kind}_token_id")
            token_id = value[0] if isinstance(value, list) and value else value
        if isinstance(token_id, int) and 0 <= token_id < n_vocab:
            special[kind] = token_id
    return special


def _pad(tokens: list, types: list, scores: list | None, n_vocab: int) -> None:
    if len(tokens) > n_vocab:
        raise KnowLMError(
            f"the tokenizer has {len(tokens)} tokens but the model's embedding has {n_vocab} rows",
            "the tokenizer files do not belong to these weights",
        )
    for i in range(len(tokens), n_vocab):
        tokens.append(f"[PAD{i}]")
        types.append(UNUSED)
        if scores is not None:
            scores.append(-1000.0)


def _sentencepiece_vocab(folder: Path, tok_json: dict, tok_cfg: dict, config: dict, n_vocab: int) -> Vocab:
    from sentencepiece import SentencePieceProcessor, sentencepiece_model_pb2

    path = folder / "tokenizer.model"
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
        sp = SentencePieceProcessor(model_proto=path.read_bytes())
    except Exception as exc:  # protobuf and sentencepiece raise various types for a bad file
        raise KnowLMError(
            f"{path} is not a SentencePiece model ({type(exc).__name__})",
            "the tokenizer download is damaged: download it again",
        ) from exc
    if proto.trainer_spec.model_type != 2:  # BPE; llama.cpp's SPM tokenizer merges by score like BPE
        raise KnowLMError(
            f"{path} is a non-BPE SentencePiece model (type {proto.trainer_spec.model_type})",
            "only LLaMA-style (BPE) SentencePiece tokenizers are supported",
        )
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(float(sp.get_score(i)))
        kind = proto.pieces[i].type  # 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte
        types.append(kind if kind in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE) else NORMAL)
    for token_id, (content, special) in sorted(_added_tokens(folder, tok_json, tok_cfg).items()):
        if token_id < len(tokens) and tokens[token_id] == content:
            continue  # <unk>, <s>, </s>: the model's own pieces keep their types
        while len(tokens) <= token_id:
            tokens.append(f"[PAD{len(tokens)}]")
            scores.append(-1000.0)
            types.append(UNUSED)
        tokens[token_id] = content if special else content.replace("\u2581", " ")
        scores[token_id] = -1000.0
        types[token_id] = CONTROL if special else USER_DEFINED
    _pad(tokens, types, scores, n_vocab)
    lookup = {t: i for i, t in enumerate(tokens)}
    bos, eos = _flags(tok_json, tok_cfg, default_bos=True)
    prefix = tok_cfg.get("add_prefix_space")
    vocab = Vocab(
        "llama",
        "default",
        tokens,
        types,
        scores=scores,
        special=_specials(lookup, tok_cfg, config, n_vocab),
        add_bos=bos,
        add_eos=eos,
        add_space_prefix=prefix if isinstance(prefix, bool) else bool(proto.normalizer_spec.add_dummy_prefix),
    )
    if proto.normalizer_spec.name not in ("identity", ""):
        vocab.warnings.append(
            f"the SentencePiece normalizer is {proto.normalizer_spec.name!r}; llama.cpp does not "
            "normalize, so unusual characters may tokenize differently"
        )
    return vocab


def _bpe_vocab(
    folder: Path, tok_json: dict, tok_cfg: dict, config: dict, n_vocab: int, pre: str | None
) -> Vocab:
    model = tok_json.get("model") or {}
    if model.get("type") != "BPE" or not _is_byte_level(tok_json):
        raise KnowLMError(
            f"{folder / 'tokenizer.json'} is not a byte-level BPE tokenizer and there is no tokenizer.model",
            "a LLaMA-style tokenizer needs its tokenizer.model (SentencePiece) file next to the weights",
        )
    pre = pre or detect_pre(tok_json)
    by_id: dict[int, str] = {int(i): t for t, i in model["vocab"].items()}
    added = _added_tokens(folder, tok_json, tok_cfg)
    size = max(n_vocab, max(by_id) + 1, max(added, default=-1) + 1)
    tokens, types = [], []
    for i in range(size):
        if i in added:
            content, special = added[i]
            tokens.append(content)
            types.append(CONTROL if special else USER_DEFINED)
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
    _pad(tokens, types, None, n_vocab)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    lookup = {t: i for i, t in enumerate(tokens)}
    bos, eos = _flags(tok_json, tok_cfg, default_bos=False)
    vocab = Vocab(
        "gpt2",
        pre,
        tokens,
        types,
        merges=merges,
        special=_specials(lookup, tok_cfg, config, n_vocab),
        add_bos=bos,
        add_eos=eos,
        add_space_prefix=False,
    )
    pre_parts = json.dumps(tok_json.get("pre_tokenizer"))
    if '"add_prefix_space": true' in pre_parts:
        vocab.warnings.append(
            "the BPE pre-tokenizer adds a prefix space, llama.cpp does not: a prompt's first "
            "word may tokenize differently"
        )
    return vocab


def load_vocab(folder: Path, n_vocab: int, config: dict | None = None, pre: str | None = None) -> Vocab:
    """Read the tokenizer files in ``folder`` for a model whose embedding has ``n_vocab`` rows."""
    folder = Path(folder)
    config = config or read_json(folder / "config.json")
    tok_json = read_json(folder / "tokenizer.json")
    tok_cfg = read_json(folder / "tokenizer_config.json")
    if tok_json and _is_byte_level(tok_json):
        vocab = _bpe_vocab(folder, tok_json, tok_cfg, config, n_vocab, pre)
    elif (folder / "tokenizer.model").is_file():
        vocab = _sentencepiece_vocab(folder, tok_json, tok_cfg, config, n_vocab)
    elif tok_json:
        vocab = _bpe_vocab(folder, tok_json, tok_cfg, config, n_vocab, pre)
    else:
        raise KnowLMError(
            f"{folder} has no tokenizer: neither tokenizer.model (SentencePiece) nor tokenizer.json (BPE)",
            "download the tokenizer files too (e.g. `knowlm-local download NAME --include '*.json' "
            "--include 'tokenizer.model'`), or copy them from the base model",
        )
    vocab.chat_template = chat_template(folder, tok_cfg)
    return vocab
