"""`knowlm-local edit`: change a fact in a model (ROME, MEMIT, IKE), evaluate it, undo it."""

from __future__ import annotations

from typing import Annotated

import typer

from knowlm_local.cli import command

EPILOG = """\
**Examples**

* `knowlm-local edit smollm2 --prompt "The Eiffel Tower is located in" --subject "Eiffel Tower" --target Rome`
  — one ROME edit, evaluated, saved to ./smollm2-135m-instruct-edited
* `knowlm-local edit ./smollm2-hf --requests edits.jsonl --method memit -o ./edited` — a batch; a table per edit
* `knowlm-local edit ./edited --log` — the edits in a folder; `knowlm-local edit ./edited --undo 3` — roll one back
* `knowlm-local convert ./edited --quant q8_0 && knowlm-local chat -m edited` — the edit lives in the GGUF
* `knowlm-local edit smollm2 --method ike --requests edits.jsonl -o facts.json` then
  `knowlm-local chat --edit-memory facts.json` — an in-context edit (no weight changes)

Requests file: JSONL, one `{"prompt", "subject", "target"}` per line, optional `"rephrases"`, `"locality"`
(unrelated prompts that must keep their answers), `"neighbours"` (the same relation with a similar subject:
scored apart, as neighbourhood) and `"portability"` (`[{"prompt", "answer"}]`).
Editing an edited folder without `-o` appends to its log; `-o` with an existing folder needs `--force`.
"""


def _layers(text: str | None) -> tuple[int, ...] | None:
    from knowlm_local.errors import KnowLMError

    if not text:
        return None
    try:
        if "-" in text.strip()[1:]:
            lo, hi = (int(x) for x in text.split("-", 1))
            if hi < lo:
                raise ValueError
            return tuple(range(lo, hi + 1))
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise KnowLMError(f"--layers {text!r} is not a layer list", "write one layer (5), a range (4-8) "
                          "or a list (4,6,8)") from None


def _probe(text: str):
    from knowlm_local.errors import KnowLMError

    prompt, sep, answer = text.partition("=>")
    if not sep or not prompt.strip() or not answer.strip():
        raise KnowLMError(f"--portability {text!r} needs the form 'question => answer'",
                          'e.g. --portability "The Eiffel Tower is in the country of => Italy"')
    return {"prompt": prompt.strip(), "answer": answer.strip()}


@command("edit", epilog=EPILOG)
def edit(
    model: Annotated[str, typer.Argument(help="Zoo name, hub repo id or HF folder (an edited folder for --undo/--log).",
                                         show_default=False)],
    prompt: Annotated[str | None, typer.Option("--prompt", help="The prompt whose continuation changes.",
                                               show_default=False)] = None,
    subject: Annotated[str | None, typer.Option("--subject", help="The subject, as written in the prompt.",
                                                show_default=False)] = None,
    target: Annotated[str | None, typer.Option("--target", help="The new continuation.", show_default=False)] = None,
    rephrase: Annotated[list[str] | None, typer.Option("--rephrase", help="A rephrased prompt (repeatable).",
                                                       show_default=False)] = None,
    locality: Annotated[list[str] | None, typer.Option("--locality", help="An unrelated prompt (repeatable).",
                                                       show_default=False)] = None,
    neighbour: Annotated[list[str] | None, typer.Option(
        "--neighbour", help="A prompt with the same relation and a similar subject, whose answer should stay "
        "(repeatable).", show_default=False)] = None,
    portability: Annotated[list[str] | None, typer.Option(
        "--portability", help="'question => answer' that should follow from the edit (repeatable).",
        show_default=False)] = None,
    requests: Annotated[str | None, typer.Option("--requests", "-r", help="A JSONL file of edit requests.",
                                                 show_default=False)] = None,
    method: Annotated[str, typer.Option("--method", help="rome (one fact, one layer), memit (a batch over layers) "
                                        "or ike (in context: no weight changes).")] = "rome",
    layers: Annotated[str | None, typer.Option("--layers", "--layer", help="ROME: one layer; MEMIT: a range (4-8). "
                                               "Default: scaled from EasyEdit's choice for LLaMA-2-7B.",
                                               show_default=False)] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="The edited folder (IKE: the memory file). "
                                               "Default: ./NAME-edited, or in place for an edited folder.",
                                               show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Replace an existing output.")] = False,
    contexts: Annotated[int, typer.Option("--contexts", min=0, max=20, help="Self-written context prefixes per "
                                          "opening word (5 openings) the key is averaged over.")] = 1,
    steps: Annotated[int, typer.Option("--steps", min=1, max=1000, help="Optimisation steps for the new value.")] = 25,
    cov_text: Annotated[str, typer.Option("--cov-text", help="A text file whose MLP keys give the covariance; `self`: "
                                          "text the model writes (seeded); `none`: no covariance (C = I, EasyEdit's "
                                          "ROME default; MEMIT needs one).")] = "self",
    no_preserve: Annotated[bool, typer.Option("--no-preserve-prompt", help="ROME: let the update also change the "
                                              "outputs at the prompt's other words (its relation), as plain ROME "
                                              "does; by default they are kept exactly.")] = False,
    no_chat: Annotated[bool, typer.Option("--no-chat", help="Do not also edit/evaluate the prompt as a chat turn.")]
    = False,
    no_eval: Annotated[bool, typer.Option("--no-eval", help="Skip the evaluation (faster).")] = False,
    undo: Annotated[int | None, typer.Option("--undo", min=1, help="Undo edit N of an edited folder (exactly).",
                                             show_default=False)] = None,
    cascade: Annotated[bool, typer.Option("--cascade", help="With --undo: also undo later edits of the same "
                                          "weights.")] = False,
    show_log: Annotated[bool, typer.Option("--log", help="List the edits recorded in an edited folder.")] = False,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed for the self-written contexts.")] = 0,
    gguf: Annotated[str | None, typer.Option("--gguf", help="Also convert and re-evaluate through llama.cpp at "
                                             "these precisions, e.g. f16,q8_0,q4_k_m.", show_default=False)] = None,
) -> None:
    """Edit a fact in a model's weights (ROME, MEMIT) or its context (IKE); evaluate, save, undo."""
    from knowlm_local.edit import show
    from knowlm_local.errors import KnowLMError

    if undo is not None or show_log:
        if undo is not None and show_log:
            raise KnowLMError("--undo and --log do not go together", "run them one after the other")
        show.undo_or_log(model, undo, cascade)
        return
    single = [x for x in (prompt, subject, target) if x is not None]
    if requests and single:
        raise KnowLMError("--requests and --prompt/--subject/--target do not go together",
                          "put every request in the file, or edit one fact on the command line")
    from knowlm_local.edit.requests import make_request, read_requests

    if requests:
        reqs = read_requests(requests)
    elif single:
        obj = {"prompt": prompt, "subject": subject, "target": target, "rephrases": rephrase or None,
               "locality": locality or None, "neighbours": neighbour or None,
               "portability": [_probe(p) for p in portability or []] or None}
        reqs = [make_request(obj, "command line")]
    else:
        raise KnowLMError("nothing to edit", "pass --prompt, --subject and --target, or --requests FILE")
    from knowlm_local.edit.rome import ValueParams
    from knowlm_local.edit.run import EditOptions

    opts = EditOptions(method=method.lower(), layers=_layers(layers), contexts=contexts, chat=not no_chat,
                       evaluate=not no_eval, cov_text=None if cov_text.lower() == "none" else cov_text,
                       seed=seed, value=ValueParams(v_steps=steps), gguf=gguf, preserve_prompt=not no_preserve)
    show.run_and_show(model, reqs, output, opts, force)
