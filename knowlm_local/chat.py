"""Chat: a multi-turn session over any backend, and the REPL around it.

KnowLM's own scripts answer one instruction at a time with fixed decoding;
here the history is kept (oldest turns dropped, with a notice, when the
context window fills), and every decoding parameter can be changed with
``/set`` between answers. The REPL reads from any line source, so a scripted
session (``printf '...' | knowlm-local chat``) runs the same code as a human.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import IO, Any

from knowlm_local.backends.base import Chunk
from knowlm_local.errors import KnowLMError
from knowlm_local.io_utils import atomic_write_text
from knowlm_local.params import GenerationParams
from knowlm_local.prompts import Message
from knowlm_local.runtime import LoadedModel


@dataclass
class Stats:
    """Counters for ``/stats``: totals over the session and the last answer's speeds."""

    answers: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    decode_tokens: int = 0
    decode_seconds: float = 0.0
    last: Chunk | None = None

    def add(self, chunk: Chunk) -> None:
        self.answers += 1
        self.prompt_tokens += chunk.prompt_tokens
        self.cached_tokens += chunk.cached_tokens
        self.completion_tokens += chunk.completion_tokens
        self.decode_tokens += chunk.decode_tokens
        self.decode_seconds += chunk.decode_seconds
        self.last = chunk


class ChatSession:
    """History + parameters + a loaded model."""

    def __init__(self, model: LoadedModel, params: GenerationParams, system: str | None = None) -> None:
        self.model = model
        self.params = params
        self.system = system
        self.messages: list[Message] = []
        self.stats = Stats()
        self.last_dropped = 0

    # -- prompt building -------------------------------------------------
    def _conversation(self, extra: list[Message]) -> list[Message]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages + extra

    def build_prompt(self, user_text: str) -> str:
        """Render the history plus ``user_text``, dropping the oldest turns until it fits."""
        backend = self.model.backend
        reserve = min(self.params.max_tokens, backend.n_ctx // 2)
        self.last_dropped = 0
        while True:
            prompt = self.model.template.render(self._conversation([{"role": "user", "content": user_text}]))
            used = backend.count_tokens(prompt)
            if used + reserve <= backend.n_ctx or not self.messages:
                break
            self.messages = self.messages[2:]  # one user/assistant pair
            self.last_dropped += 1
        if used >= backend.n_ctx:
            raise KnowLMError(
                f"this message needs {used} tokens; the context window is {backend.n_ctx}",
                "shorten it or restart with a larger --ctx",
            )
        return prompt

    def ask(self, user_text: str, cancel: threading.Event | None = None) -> Iterator[Chunk]:
        """Stream the answer to ``user_text``; the (possibly partial) answer joins the history."""
        prompt = self.build_prompt(user_text)
        parts: list[str] = []
        last: Chunk | None = None
        try:
            for chunk in self.model.backend.generate(prompt, self.params, cancel=cancel):
                parts.append(chunk.text)
                last = chunk
                yield chunk
        finally:
            self.messages += [
                {"role": "user", "content": user_text},
                {"role": "assistant", "content": "".join(parts).strip()},
            ]
            if last is not None and last.finish_reason is not None:
                self.stats.add(last)

    def clear(self) -> None:
        self.messages = []

    # -- persistence -----------------------------------------------------
    def save(self, path: str | Path) -> Path:
        data = {
            "model": self.model.resolved.name,
            "system": self.system,
            "params": self.params.as_dict(),
            "messages": self.messages,
        }
        return atomic_write_text(Path(path), json.dumps(data, ensure_ascii=False, indent=2) + "\n")

    def load(self, path: str | Path) -> None:
        """Restore a conversation written by :meth:`save`; anything else is refused, the session unchanged."""
        from knowlm_local.jsonio import read_json

        path = Path(path)
        hint = "use a file written by /save"
        data = read_json(path, what="saved chat", hint=hint)
        raw_messages = data.get("messages", [])
        if not isinstance(raw_messages, list):
            raise KnowLMError(f"{path}: \"messages\" is not a list", hint)
        messages = []
        for i, m in enumerate(raw_messages):
            if not (isinstance(m, dict) and m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str)):
                raise KnowLMError(f"{path}: message {i + 1} is not {{\"role\": \"user\"|\"assistant\", "
                                  f"\"content\": \"...\"}}", hint)
            messages.append({"role": m["role"], "content": m["content"]})
        system = data.get("system")
        if system is not None and not isinstance(system, str):
            raise KnowLMError(f"{path}: \"system\" is not a string", hint)
        params = self.params
        saved = data.get("params") or {}
        if not isinstance(saved, dict):
            raise KnowLMError(f"{path}: \"params\" is not an object", hint)
        for key, value in saved.items():
            if key not in GenerationParams.field_names():
                continue
            kind = "list" if key == "stop" else str(next(f.type for f in fields(GenerationParams) if f.name == key))
            ok = (isinstance(value, list) and all(isinstance(v, str) for v in value)) if kind == "list" else (
                isinstance(value, (int, float)) and not isinstance(value, bool)
                and (kind == "float" or float(value).is_integer()))
            if not ok:
                raise KnowLMError(f"{path}: parameter {key} is {value!r}, not a {kind}", hint)
            value = tuple(value) if kind == "list" else (float(value) if kind == "float" else int(value))
            params = replace(params, **{key: value})  # GenerationParams checks the range
        self.system, self.messages, self.params = system, messages, params


# ---------------------------------------------------------------------------
# REPL

HELP = """\
/set                      show the decoding parameters
/set NAME VALUE           change one, e.g. /set temperature 0.2, /set stop ###,END
/system TEXT              set the system prompt (/system with no text shows it; /system none clears)
/clear                    forget the conversation (keeps the system prompt)
/save FILE  /load FILE    write or restore the conversation and parameters as JSON
/stats                    tokens used and speed
/help                     this list
/bye                      leave (also /exit, /quit, Ctrl-D)
Ctrl-C stops the current answer. Start a message with \"\"\" to type several lines; end with \"\"\"."""


class Repl:
    """The interactive loop; ``read`` returns a line or raises EOFError."""

    def __init__(self, session: ChatSession, out: IO[str], err: Any, read: Callable[[str], str],
                 interactive: bool, verbose: bool = False) -> None:
        self.session = session
        self.verbose = verbose
        self.out = out
        self.err = err  # a rich Console for notices
        self.read = read
        self.interactive = interactive

    def run(self) -> None:
        while True:
            try:
                line = self._read_message()
            except EOFError:
                return
            except KeyboardInterrupt:
                self.err.print("\n(use /bye or Ctrl-D to leave)")
                continue
            if not line.strip():
                continue
            if line.startswith("/"):
                try:
                    if self.command(line.strip()) == "bye":
                        return
                except KnowLMError as exc:
                    self.err.print(f"[red]error:[/red] {exc.message}" + (f"  [dim]({exc.hint})[/dim]" if exc.hint else ""))
                continue
            try:
                self.answer(line)
            except KnowLMError as exc:
                self.err.print(f"[red]error:[/red] {exc.message}" + (f"  [dim]({exc.hint})[/dim]" if exc.hint else ""))

    def _read_message(self) -> str:
        line = self.read(">>> " if self.interactive else "")
        if not line.lstrip().startswith('"""'):
            return line
        lines = [line.lstrip()[3:]]
        while not lines[-1].rstrip().endswith('"""'):
            lines.append(self.read("... " if self.interactive else ""))
        lines[-1] = lines[-1].rstrip()[:-3]
        return "\n".join(lines).strip()

    def answer(self, text: str) -> None:
        cancel = threading.Event()
        stream = self.session.ask(text, cancel=cancel)
        first = True  # build_prompt runs lazily inside the generator: report drops after the first chunk
        try:
            for chunk in stream:
                if first:
                    first = False
                    if self.session.last_dropped:
                        self.err.print(
                            f"[yellow](dropped the {self.session.last_dropped} oldest turn(s) to fit the "
                            f"{self.session.model.backend.n_ctx}-token context window)[/yellow]"
                        )
                self.out.write(chunk.text)
                self.out.flush()
        except KeyboardInterrupt:
            cancel.set()
            stream.close()
            self.out.write("\n")
            self.err.print("[dim](stopped)[/dim]")
            return
        self.out.write("\n")
        self.out.flush()
        last = self.session.stats.last
        if self.verbose and last is not None:
            self.err.print(f"[dim]{last.completion_tokens} tokens, {last.decode_tps:.1f} tokens/s[/dim]")

    def command(self, line: str) -> str | None:
        name, _, rest = line.partition(" ")
        rest = rest.strip()
        session = self.session
        if name in ("/bye", "/exit", "/quit"):
            return "bye"
        if name == "/help":
            self.err.print(HELP, markup=False, highlight=False)
        elif name == "/set":
            if not rest:
                for key, value in session.params.as_dict().items():
                    self.err.print(f"{key:18} {value}", markup=False, highlight=False)
            else:
                key, _, value = rest.partition(" ")
                session.params = session.params.with_value(key, value.strip())
                self.err.print(f"{key} = {getattr(session.params, key.replace('-', '_'))}", markup=False)
        elif name == "/system":
            if not rest:
                self.err.print(session.system or "(no system prompt)", markup=False)
            else:
                session.system = None if rest.lower() == "none" else rest
                self.err.print("system prompt cleared" if session.system is None else "system prompt set")
        elif name == "/clear":
            session.clear()
            self.err.print("conversation cleared")
        elif name == "/save":
            if not rest:
                raise KnowLMError("/save needs a file name", "example: /save chat.json")
            self.err.print(f"saved to {session.save(rest)}", markup=False)
        elif name == "/load":
            if not rest:
                raise KnowLMError("/load needs a file name", "example: /load chat.json")
            session.load(rest)
            self.err.print(f"loaded {len(session.messages) // 2} turn(s) from {rest}", markup=False)
        elif name == "/stats":
            self.err.print(format_stats(session), markup=False, highlight=False)
        else:
            raise KnowLMError(f"unknown command {name}", "type /help for the list")
        return None


def format_stats(session: ChatSession) -> str:
    s = session.stats
    backend = session.model.backend
    in_context = backend.count_tokens(session.model.template.render(session._conversation([]), False)) \
        if session.messages or session.system else 0
    lines = [
        f"model              {session.model.resolved.name} ({backend.info.name}, {backend.info.device})",
        f"context            {in_context} / {backend.n_ctx} tokens in use",
        f"answers            {s.answers}",
        f"prompt tokens      {s.prompt_tokens} ({s.cached_tokens} reused from the KV cache)",
        f"generated tokens   {s.completion_tokens}",
    ]
    if s.decode_seconds > 0:
        lines.append(f"decode speed       {s.decode_tokens / s.decode_seconds:.1f} tokens/s (session)")
    if s.last is not None:
        lines.append(f"last answer        {s.last.completion_tokens} tokens, {s.last.decode_tps:.1f} tokens/s decode, "
                     f"{s.last.prompt_tps:.1f} tokens/s prompt")
    return "\n".join(lines)


def one_shot(session: ChatSession, text: str, out: IO[str]) -> Chunk:
    """Answer one message, streaming to ``out``; returns the last chunk (totals and speed)."""
    last = Chunk(text="")
    for chunk in session.ask(text):
        out.write(chunk.text)
        out.flush()
        last = chunk
    out.write("\n")
    out.flush()
    return last


def run_chat(model: str | None, options: Any, prompt: str | None = None, read_stdin: bool = False,
             system: str | None = None, overrides: dict[str, Any] | None = None, verbose: bool = False,
             stdin: IO[str] | None = None, stdout: IO[str] | None = None) -> ChatSession:
    """What `knowlm-local chat` does: load, then one-shot (``prompt`` / ``read_stdin``) or the REPL."""
    import sys

    from knowlm_local.runtime import load_model
    from knowlm_local.term import stderr_console

    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    err = stderr_console()
    if read_stdin:
        prompt = stdin.read()
        if not prompt.strip():
            raise KnowLMError("stdin is empty", 'pipe a question in: echo "question" | knowlm-local chat -')
    loaded = load_model(model, options)
    for line in loaded.notes():
        err.print(line, style="dim", markup=False, highlight=False)
    session = ChatSession(loaded, loaded.default_params(**(overrides or {})), system=system)
    try:
        if prompt is not None:
            last = one_shot(session, prompt, stdout)
            if verbose:
                err.print(f"[dim]{last.completion_tokens} tokens, {last.decode_tps:.1f} tokens/s decode, "
                          f"{last.prompt_tps:.1f} tokens/s prompt[/dim]")
            return session
        interactive = stdin.isatty()
        if interactive:
            info = loaded.backend.info
            err.print(f"[bold]{loaded.resolved.name}[/bold] on {info.device}, context {info.n_ctx} tokens, "
                      f"template {loaded.template.name}. Type /help for commands, /bye to leave.")
            try:
                import readline  # noqa: F401  (line editing and history for input())
            except ImportError:  # pragma: no cover - Windows
                pass

        def read(prefix: str) -> str:
            if interactive:
                return input(prefix)
            line = stdin.readline()
            if not line:
                raise EOFError
            return line.rstrip("\n")

        Repl(session, stdout, err, read, interactive, verbose).run()
        return session
    finally:
        loaded.backend.close()
