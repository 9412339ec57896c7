"""Bad inputs for every command, written once into a folder: damaged files of each kind a command reads.

Used by tests/test_no_traceback.py (through the real CLI) and by the fuzz tests.
Each file is small; the "huge" ones are sparse or cheap to write.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path


def gguf_bytes(path: Path) -> bytes:
    return Path(path).read_bytes()


def write_gguf_cases(root: Path, good: Path) -> None:
    """Truncations and corruptions of a real GGUF (the embedded model's header and some data)."""
    data = good.read_bytes()
    g = root / "gguf"
    g.mkdir(parents=True, exist_ok=True)
    (g / "empty.gguf").write_bytes(b"")
    (g / "two-bytes.gguf").write_bytes(b"GG")
    (g / "magic-only.gguf").write_bytes(b"GGUF")
    (g / "header-only.gguf").write_bytes(data[:24])
    for n in (30, 1000, 100_000, 2_000_000):
        (g / f"cut-{n}.gguf").write_bytes(data[:n])
    (g / "cut-last-byte.gguf").write_bytes(data[:-1])
    (g / "random.gguf").write_bytes(bytes((i * 7919 + 13) % 251 for i in range(4096)))
    (g / "magic-random.gguf").write_bytes(b"GGUF" + bytes((i * 31 + 7) % 256 for i in range(4096)))
    (g / "version-99.gguf").write_bytes(data[:4] + struct.pack("<I", 99) + data[8:100_000])
    (g / "huge-count.gguf").write_bytes(data[:16] + struct.pack("<Q", 1 << 60) + data[24:100_000])
    bad_type = bytearray(data[:100_000])
    key_len = struct.unpack_from("<Q", bad_type, 24)[0]
    struct.pack_into("<I", bad_type, 32 + key_len, 77)  # the first key's value type
    (g / "bad-value-type.gguf").write_bytes(bytes(bad_type))
    (g / "folder.gguf").mkdir(exist_ok=True)
    (g / "not-gguf.gguf").write_text("this is a text file, not a model\n")


def write_text_cases(root: Path) -> None:
    """Inputs for extract and score: empty, binary, other encodings, broken JSON Lines, deep nesting."""
    t = root / "text"
    t.mkdir(parents=True, exist_ok=True)
    (t / "empty.txt").write_bytes(b"")
    (t / "blank.txt").write_text("\n\n  \n")
    (t / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (t / "gb18030.txt").write_bytes("浙江大学位于杭州。".encode("gb18030"))
    (t / "utf16.txt").write_bytes("Zhejiang University is in Hangzhou.".encode("utf-16"))
    (t / "latin1.jsonl").write_bytes(b'{"id": "1", "text": "caf\xe9"}\n')
    (t / "empty.jsonl").write_bytes(b"")
    (t / "blank.jsonl").write_text("\n\n")
    (t / "bad-line-3.jsonl").write_text('{"id": "1", "text": "a"}\n{"id": "2", "text": "b"}\n{"id": "3", "text": \n')
    (t / "array-line.jsonl").write_text('[1, 2, 3]\n')
    (t / "no-text.jsonl").write_text('{"id": "1", "body": "no text field"}\n')
    (t / "text-number.jsonl").write_text('{"id": "1", "text": 42}\n')
    (t / "deep.jsonl").write_text("[" * 100_000 + "\n")
    (t / "deep-field.jsonl").write_text('{"id": "1", "text": "a", "x": ' + "[" * 100_000 + "}\n")
    (t / "huge.txt").write_bytes(b"a" * (65 * 1024 * 1024))  # over the one-document limit
    (t / "good.jsonl").write_text('{"id": "1", "text": "Zhejiang University is in Hangzhou."}\n')
    (t / "not-extract.jsonl").write_text('{"hello": "world"}\n')
    # score: predictions and gold of the wrong kinds
    (t / "pred.jsonl").write_text(json.dumps({"id": "1", "task": "NER", "result": {"person": ["Ann"]}}) + "\n")
    (t / "pred-unknown-task.jsonl").write_text(json.dumps({"id": "1", "task": "XYZ", "result": {}}) + "\n")
    (t / "pred-no-result.jsonl").write_text(json.dumps({"id": "1", "task": "NER"}) + "\n")
    (t / "gold-other-ids.jsonl").write_text(json.dumps({"id": "99", "entity": []}) + "\n")
    (t / "gold-bad-label.jsonl").write_text(json.dumps({"id": "1", "label": "{not json"}) + "\n")


def write_schema_cases(root: Path) -> None:
    s = root / "schema"
    s.mkdir(parents=True, exist_ok=True)
    (s / "empty.json").write_bytes(b"")
    (s / "bad.json").write_text('["person", "location"\n')
    (s / "bad.yaml").write_text("- person\n- [unclosed\n")
    (s / "binary.json").write_bytes(bytes(range(256)))
    (s / "latin1.json").write_bytes(b'["caf\xe9"]')
    (s / "number.json").write_text("42")
    (s / "numbers.json").write_text("[1, 2, 3]")
    (s / "desc-not-string.json").write_text('{"person": 5}')
    (s / "int-keys.yaml").write_text("1: one\n2: two\n")
    (s / "deep.json").write_text("[" * 100_000)
    (s / "deep.yaml").write_text("- " * 5_000 + "x\n")
    (s / "other-task.json").write_text('{"task": "re", "schema": ["founder"]}')
    (s / "ee-args-number.json").write_text('[{"event_type": "x", "arguments": 5}]')
    (s / "bomb.yaml").write_text(
        "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8)))
    (s / "folder.json").mkdir(exist_ok=True)


def write_chat_cases(root: Path) -> None:
    c = root / "chat"
    c.mkdir(parents=True, exist_ok=True)
    (c / "not-json.json").write_text("hello")
    (c / "list.json").write_text("[1, 2]")
    (c / "bad-messages.json").write_text('{"messages": [{"role": "wizard", "content": 1}]}')
    (c / "bad-param.json").write_text('{"messages": [], "params": {"temperature": "hot"}}')
    (c / "bad-range.json").write_text('{"messages": [], "params": {"top_p": 7}}')
    (c / "latin1.json").write_bytes(b'{"system": "caf\xe9"}')
    (c / "deep.json").write_text("[" * 100_000)


def write_checkpoint_cases(root: Path, good: Path) -> None:
    """Copies of a real tiny HF checkpoint with one thing broken each."""
    h = root / "hf"
    h.mkdir(parents=True, exist_ok=True)

    def variant(name: str) -> Path:
        dest = h / name
        if not dest.exists():
            shutil.copytree(good, dest)
        return dest

    (variant("config-invalid") / "config.json").write_text('{"hidden_size": ')
    (variant("config-list") / "config.json").write_text("[1, 2, 3]")
    (variant("config-empty") / "config.json").write_text("")
    cfg = json.loads((good / "config.json").read_text())
    (variant("config-zero-heads") / "config.json").write_text(json.dumps({**cfg, "num_attention_heads": 0}))
    (variant("config-string-layers") / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": "two"}))
    (variant("config-arch-number") / "config.json").write_text(json.dumps({**cfg, "architectures": 7}))
    (variant("tokenizer-invalid") / "tokenizer.json").write_text("{")
    weights = sorted(good.glob("*.safetensors"))[0].name
    raw = (good / weights).read_bytes()
    (variant("st-truncated") / weights).write_bytes(raw[: len(raw) // 2])
    (variant("st-header-len") / weights).write_bytes(struct.pack("<Q", 1 << 40) + raw[8:])
    n = struct.unpack_from("<Q", raw)[0]
    garbage = b"[" + b" " * (n - 1)
    (variant("st-header-json") / weights).write_bytes(raw[:8] + garbage + raw[8 + n:])
    header = json.loads(raw[8:8 + n])
    first = next(k for k in header if k != "__metadata__")
    header[first] = {"dtype": "F32", "shape": "wide", "data_offsets": [0, 4]}
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    (variant("st-header-types") / weights).write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n:])
    nobin = variant("bin-garbage")
    for p in nobin.glob("*.safetensors"):
        p.unlink()
    (nobin / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not really a zip" + bytes(200))
    lora = h / "lora-bad-config"
    lora.mkdir(exist_ok=True)
    (lora / "adapter_config.json").write_text("{oops")
    (lora / "adapter_model.safetensors").write_bytes(raw[:200])
    (h / "imatrix.dat").write_bytes(b"\x05\x00\x00\x00garbage")
    (h / "no-config").mkdir(exist_ok=True)
    (h / "no-config" / "model.safetensors").write_bytes(raw)
