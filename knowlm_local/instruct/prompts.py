"""The requests instruction processing sends to a model, in English and Chinese, in one place.

Each request asks for one JSON object; where the backend enforces a JSON schema (llama.cpp) the answer always
has that shape, so even a 135M model's output parses. The wording is this project's own; what each request asks
for follows self-instruct, Evol-Instruct and instruction back-translation (see the modules that use them).
"""

from __future__ import annotations

import json

GENERATE = {
    "en": "You write tasks for training an AI assistant. Here are some example tasks, each one JSON object:\n\n"
          "{examples}\n\nWrite one new task that differs from every example in topic and in kind. A text-only "
          "assistant must be able to do it (no images, files, audio or web browsing). Answer with one JSON object: "
          "\"instruction\" (the task), \"input\" (the context it needs, or \"\") and \"output\" (a good answer).",
    "zh": "你在为训练AI助手编写任务。下面是一些示例任务，每个都是一个JSON对象：\n\n{examples}\n\n"
          "请写一个新任务，主题和类型都要与所有示例不同，并且只用文字就能完成（不涉及图片、文件、音频或上网）。"
          "用一个JSON对象回答：\"instruction\"（任务），\"input\"（任务需要的上下文，没有则为\"\"），"
          "\"output\"（一个好的回答）。",
}

EVOLVE_OPS = {
    "constraints": {"en": "Add one more constraint or requirement to it.",
                    "zh": "给它增加一个约束或要求。"},
    "deepen": {"en": "Make it ask for more depth and breadth on its subject.",
               "zh": "让它对主题的探讨更深入、更广泛。"},
    "concretize": {"en": "Replace its general ideas with more specific ones.",
                   "zh": "把其中笼统的概念换成更具体的概念。"},
    "reasoning": {"en": "Make it explicitly need several steps of reasoning.",
                  "zh": "让它明确需要多步推理才能完成。"},
    "broaden": {"en": "Instead of keeping it, write a brand-new task in the same domain on a rarer subject.",
                "zh": "不要保留原任务，而是在同一领域写一个主题更少见的全新任务。"},
}

EVOLVE = {
    "en": "Rewrite this task for training an AI assistant. {operation} The new task must stay reasonable, make sense "
          "on its own and be doable by a text-only assistant; it may be at most 20 words longer.\n\nTask: {task}\n\n"
          "Answer with one JSON object: \"instruction\" (the new task) and \"input\" (its context, or \"\").",
    "zh": "改写这个用于训练AI助手的任务。{operation}新任务要合理、本身能看懂、只用文字就能完成，最多比原任务长20个词。"
          "\n\n任务：{task}\n\n用一个JSON对象回答：\"instruction\"（新任务）和\"input\"（它的上下文，没有则为\"\"）。",
}

BACKTRANSLATE = {
    "en": "Here is a text:\n\n{document}\n\nWrite the instruction a user could have given an AI assistant for which "
          "this text is a good answer. Answer with one JSON object: {{\"instruction\": \"...\"}}.",
    "zh": "下面是一段文字：\n\n{document}\n\n请写出用户可能向AI助手提出的一条指令，使这段文字正好是它的好回答。"
          "用一个JSON对象回答：{{\"instruction\": \"...\"}}。",
}

RATE = {
    "en": "Rate how well the response answers the instruction, from 1 to 5:\n"
          "1: unrelated or wrong\n2: answers only part of it, or barely helps\n"
          "3: helpful but incomplete, or not written as an assistant's answer\n"
          "4: a good, complete answer written as an assistant would\n"
          "5: a perfect answer: complete, accurate, clear and focused\n\n"
          "Instruction: {instruction}\n{input}Response: {output}\n\n"
          "Answer with one JSON object: {{\"score\": N}}.",
    "zh": "请给回答打分（1到5分），看它对指令回答得如何：\n1：无关或错误\n2：只回答了一部分，或几乎没有帮助\n"
          "3：有帮助但不完整，或不像助手的回答\n4：完整的好回答，像助手那样写成\n5：完美的回答：完整、准确、清楚、切题\n\n"
          "指令：{instruction}\n{input}回答：{output}\n\n用一个JSON对象回答：{{\"score\": N}}。",
}

INPUT_LINE = {"en": "Input: {input}\n", "zh": "输入：{input}\n"}


def task_json(instruction: str, input_text: str = "", output: str | None = None) -> str:
    """A task as the one-line JSON object the requests show and ask for."""
    obj = {"instruction": instruction, "input": input_text}
    if output is not None:
        obj["output"] = output
    return json.dumps(obj, ensure_ascii=False)


def string_schema(*fields: str) -> dict:
    """A JSON schema: an object of exactly these string fields, the first one non-empty.

    No ``maxLength``: llama-cpp-python expands a length cap into one nested rule per character, which for a
    few hundred characters makes the grammar slow to sample and, past llama.cpp's limit, fails to parse (and
    has crashed the process); answers are bounded by ``max_tokens`` instead, and a cut one is counted.
    """
    props: dict = {name: {"type": "string"} for name in fields}
    props[fields[0]]["minLength"] = 1
    return {"type": "object", "properties": props, "required": list(fields), "additionalProperties": False}


SCORE_SCHEMA = {"type": "object", "properties": {"score": {"type": "integer", "enum": [1, 2, 3, 4, 5]}},
                "required": ["score"], "additionalProperties": False}
