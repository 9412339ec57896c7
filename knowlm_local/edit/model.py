"""An HF causal LM opened for editing: weights, tokenizer, token positions, and the MLP hooks.

ROME and MEMIT rewrite ``model.layers.{L}.mlp.down_proj``, the second matrix of
a Llama-style gated MLP: its input at the subject's last token is the *key*
of a fact, its output the *value*. Architectures with that module (Llama,
Mistral, Qwen2, Gemma's and SmolLM's Llama copies) are accepted; others are
refused by name. Computation runs in float32 on CPU (or the checkpoint's
dtype on CUDA); the weights keep their own dtype on disk.
"""

from __future__ import annotations

import contextlib
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knowlm_local.errors import KnowLMError

SUPPORTED = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")


def module_name(layer: int) -> str:
    """The state-dict name of the weight an edit at ``layer`` rewrites."""
    return f"model.layers.{layer}.mlp.down_proj.weight"


def join(prompt: str, target: str) -> str:
    """``prompt`` followed by ``target`` with the space English needs and Chinese does not."""
    if not prompt or prompt[-1].isspace() or target[:1].isspace():
        return prompt + target
    if _cjk(prompt[-1]) or _cjk(target[0]):
        return prompt + target
    return prompt + " " + target


def _cjk(ch: str) -> bool:
    return unicodedata.east_asian_width(ch) in ("W", "F")


@dataclass
class Encoded:
    """A batch of texts as token ids (right-padded), with the positions an edit reads and writes."""

    input_ids: Any  # LongTensor [B, T]
    attention_mask: Any
    lookup: list[int]  # per row: index of the subject's last token
    target_spans: list[tuple[int, int]]  # per row: [start, end) of the target's tokens ((0, 0) when none)


class EditableModel:
    """The model, its tokenizer and what editing needs to know about them."""

    def __init__(self, folder: Path, device: str | None = None, check_arch: bool = True) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        self.folder = Path(folder)
        config = AutoConfig.from_pretrained(self.folder, trust_remote_code=False)
        arch = (getattr(config, "architectures", None) or ["?"])[0]
        if check_arch and arch not in SUPPORTED:
            raise KnowLMError(f"{self.folder}: architecture {arch} is not supported by ROME/MEMIT here",
                              f"supported: {', '.join(SUPPORTED)} (models with model.layers.N.mlp.down_proj); "
                              "IKE (--method ike) works with any model")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float32 if self.device == "cpu" else getattr(config, "torch_dtype", None) or torch.float16
        self.model = AutoModelForCausalLM.from_pretrained(self.folder, dtype=dtype, trust_remote_code=False)
        self.model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tok = AutoTokenizer.from_pretrained(self.folder, trust_remote_code=False)
        if not getattr(self.tok, "is_fast", False):
            raise KnowLMError(f"{self.folder}: editing needs a fast tokenizer (tokenizer.json)",
                              "save the tokenizer with `tokenizer.save_pretrained` from transformers")
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.tok.padding_side = "right"  # positions below count from the left
        self.n_layers = config.num_hidden_layers
        self.arch = arch

    # -- weights -----------------------------------------------------------------------------------

    def weight(self, layer: int):
        return self.model.model.layers[layer].mlp.down_proj.weight

    def mlp(self, layer: int):
        return self.model.model.layers[layer].mlp.down_proj

    def check_layers(self, layers: list[int]) -> None:
        bad = [n for n in layers if not 0 <= n < self.n_layers]
        if bad:
            raise KnowLMError(f"layer {bad[0]} does not exist: the model has layers 0-{self.n_layers - 1}",
                              "pick a layer in that range (early-middle layers hold facts best)")

    # -- text --------------------------------------------------------------------------------------

    def chat(self, user: str, system: str | None = None) -> str:
        """``user`` as one chat turn, rendered with the model's template up to the answer."""
        if not getattr(self.tok, "chat_template", None):
            return user
        head = [{"role": "system", "content": system}] if system else []
        return self.tok.apply_chat_template(head + [{"role": "user", "content": user}], tokenize=False,
                                            add_generation_prompt=True)

    def encode(self, texts: list[str], subject_ends: list[int | None], target_starts: list[int | None]) -> Encoded:
        """Tokenize ``texts``; ``subject_ends[i]`` and ``target_starts[i]`` are character offsets in ``texts[i]``.

        The lookup token is the one that ends the subject (the last token that
        starts before the subject's end); the target's tokens are those that
        start at or after its first character.
        """

        batch = self.tok(texts, return_offsets_mapping=True, add_special_tokens=self._adds_bos(), padding=True,
                         return_tensors="pt")
        offsets = batch.pop("offset_mapping").tolist()
        mask = batch["attention_mask"]
        lookup, spans = [], []
        for i, offs in enumerate(offsets):
            n = int(mask[i].sum())
            real, shift = offs[:n], 0
            end = subject_ends[i]
            if end is not None:
                idx = max((j for j, (a, b) in enumerate(real) if a < end and b > a), default=None)
                if idx is None:
                    raise KnowLMError(f"cannot locate the subject in {texts[i]!r}", "check the request's subject")
                lookup.append(idx + shift)
            else:
                lookup.append(n - 1 + shift)
            start = target_starts[i]
            if start is None:
                spans.append((0, 0))
            else:
                first = next((j for j, (a, b) in enumerate(real) if b > a and b > start), n)
                spans.append((first + shift, n + shift))
        return Encoded(batch["input_ids"].to(self.device), mask.to(self.device), lookup, spans)

    def _adds_bos(self) -> bool:
        return bool(getattr(self.tok, "add_bos_token", False))

    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=self._adds_bos())["input_ids"]

    # -- hooks -------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def capture_inputs(self, layer: int, store: list) -> Iterator[None]:
        """Append the down_proj input tensor ([B, T, I]) of ``layer`` to ``store`` on each forward."""
        handle = self.mlp(layer).register_forward_hook(lambda mod, args, out: store.append(args[0].detach()))
        try:
            yield
        finally:
            handle.remove()

    @contextlib.contextmanager
    def add_to_output(self, layer: int, delta, rows: list[int], positions: list[int]) -> Iterator[None]:
        """Add ``delta`` to the down_proj output of ``layer`` at (row, position) pairs."""

        def hook(mod, args, out):
            out = out.clone()
            out[rows, positions] = out[rows, positions] + delta
            return out

        handle = self.mlp(layer).register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()
