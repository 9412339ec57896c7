"""The copy constraint without a model: the substring index against brute force, the JSON tracker's verdicts,
candidate listing that never misses an allowed token, and exact greedy choice."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from knowlm_local.backends.constrained import CopyChooser, Vocab
from knowlm_local.ie.copy import DONE, DUP, OK, REFUSED, Constraint
from knowlm_local.ie.textindex import SuffixAutomaton, TextIndex, fold

settings.register_profile("copy", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("long" if os.environ.get("HYPOTHESIS_PROFILE") == "long" else "copy")

CHARS = st.sampled_from(list("abAB a\"\\\n") + ["人", "物", "北", "京", "😀", "，", "Ａ", "\u3000"])
texts = st.lists(CHARS, max_size=24).map("".join)


@given(st.binary(max_size=40), st.binary(max_size=8))
@example(b"abcbc", b"cbc")
@example(b"aaaa", b"aaaaa")
def test_suffix_automaton_recognises_exactly_the_substrings(text, needle):
    sam = SuffixAutomaton(text)
    assert sam.contains(needle) == (needle in text)
    for i in range(len(text)):  # every substring is recognised
        for j in range(i, min(len(text), i + 6) + 1):
            assert sam.contains(text[i:j])


def _whole_word_occurs(view: str, needle: str) -> bool:
    """Brute force: ``needle`` occurs in ``view`` without starting or ending inside a word."""
    from knowlm_local.ie.textindex import is_word

    for i in range(len(view) - len(needle) + 1):
        if view[i:i + len(needle)] != needle:
            continue
        j = i + len(needle)
        if is_word(needle[0]) and i > 0 and is_word(view[i - 1]):
            continue
        if is_word(needle[-1]) and j < len(view) and is_word(view[j]):
            continue
        return True
    return False


def _span_ok(index: TextIndex, needle: str) -> bool:
    from knowlm_local.ie.textindex import is_word

    states, first = (0,), True
    for c in needle:
        states = index.step_char(states, c.encode(), first, is_word(c))
        first = False
    return bool(states) and index.may_end(states, is_word(needle[-1]))


@given(texts, texts)
@example("Paris is nice", "Paris")
@example("Parisian", "Paris")
@example("Paris Hilton", "s Hil")
@example("2019年", "019")
def test_whole_word_substrings_strict_and_loose(text, needle):
    if not needle:
        return
    assert _span_ok(TextIndex(text), needle) == _whole_word_occurs(text, needle)
    folded = fold(needle)
    if folded:
        assert _span_ok(TextIndex(text, "loose"), folded) == _whole_word_occurs(fold(text), folded)


def _answer(task: str, result: dict) -> bytes:
    return json.dumps(result, ensure_ascii=False).encode()


def _feed_split(tracker, data: bytes, cuts: list[int]) -> str:
    verdict = OK
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in zip(points, points[1:], strict=False):
        verdict = tracker.feed(data[a:b])
        if verdict is not OK:
            return verdict
    return verdict


@given(texts, st.lists(st.tuples(st.integers(0, 30), st.integers(1, 8)), max_size=4),
       st.lists(st.integers(0, 400), max_size=6))
def test_answers_are_judged_alike_however_the_bytes_are_split(text, picks, cuts):
    values = []
    for start, n in picks:
        piece = text[start:start + n]
        if piece not in values:
            values.append(piece)
    data = _answer("NER", {"person": values, "location": []})
    whole = Constraint("NER", text).start().feed(data)
    assert _feed_split(Constraint("NER", text).start(), data, cuts) == whole
    good = all(v.strip() and _whole_word_occurs(text, v) for v in values)
    assert (whole == DONE) == good


def test_duplicates_blank_strings_and_list_limits():
    text = "Ann met Bob in Paris."
    t = Constraint("NER", text).start()
    assert t.feed(b'{"person": ["Ann", "Bob", ') == OK
    assert t.copy().feed(b'"Ann"') == DUP  # the third item repeats the first
    assert t.copy().feed(b'"  "') == REFUSED  # blank
    assert t.copy().feed(b'""') == REFUSED  # empty
    assert t.copy().feed(b'"Ann met"], "location": []}') == DONE  # a longer substring is a new item
    assert t.copy().feed(b'"Par"') == REFUSED  # cuts a word
    assert t.copy().feed(b'"nn"') == REFUSED  # starts inside a word
    limited = Constraint("NER", text, max_items=2).start()
    assert limited.feed(b'{"person": ["Ann", "Bob"') == OK
    assert limited.copy().feed(b", ") == REFUSED  # a third item would pass the limit
    assert limited.feed(b"]") == OK


def test_ner_gives_a_span_one_label_unless_multi_label():
    text = "Ann met Bob in Paris."
    t = Constraint("NER", text).start()
    assert t.feed(b'{"person": ["Ann", "Paris"], "location": [') == OK
    again = t.copy()
    assert again.feed(b'"Paris"') == DUP  # already a person: this list has run out of its own items
    assert again.last_dup[1:] == (0, ("location",))  # its first item, which the decoder closes empty
    assert t.copy().feed(b'"Bob"]}') == DONE
    loose = Constraint("NER", text, mode="loose").start()
    assert loose.feed(b'{"person": ["Ann"], "location": ["ANN"') == DUP  # loose compares folded
    for mode, one_label in (("strict", False), ("off", None)):
        free = Constraint("NER", text, mode=mode, one_label=one_label).start()
        assert free.feed(b'{"person": ["Paris"], "location": ["Paris"]}') == DONE
    re_ = Constraint("RE", "Acme is in Paris. Zeta is in Paris.").start()  # only NER gives a span one label
    assert re_.feed(b'{"located in": [{"subject": "Acme", "object": "Paris"}, {"subject": "Zeta", '
                    b'"object": "Paris"}]}') == DONE


def test_keys_labels_and_nan_are_not_spans():
    text = "person Ann"  # a label that also occurs in the text is still a key
    assert Constraint("NER", text).start().feed(b'{"person": ["person"], "x": []}') == DONE
    ee = Constraint("EE", "Acme bought Zeta.")
    answer = b'{"acquisition": [{"trigger": "bought", "arguments": {"acquirer": "Acme", "acquired": "NAN"}}]}'
    assert ee.start().feed(answer) == DONE
    assert ee.start().feed(answer.replace(b'"NAN"', b'"NaN"')) == REFUSED
    kg = Constraint("KG", "Ann was born in 1990.")
    assert kg.start().feed(b'{"person": {"Ann": {"date of birth": "1990"}}}') == DONE
    assert kg.start().feed(b'{"person": {"Bo": {}}}') == REFUSED  # the entity name (a key) is a span
    t = kg.start()
    assert t.feed(b'{"person": {"Ann": {}, ') == OK and t.feed(b'"Ann"') == DUP


def test_escapes_in_strict_mode_follow_json_dumps():
    text = 'He said "hi"\\ now\nand then/'
    c = Constraint("NER", text)
    for value in ['said "hi"', 'hi"\\', "now\nand", "then/"]:
        data = b'{"person": [' + json.dumps(value, ensure_ascii=False).encode() + b"]}"
        assert c.start().feed(data) == DONE, value
    assert c.start().feed(b'{"person": ["then\\/"]}') == REFUSED  # legal JSON, but not how json.dumps writes it
    assert c.start().feed(b'{"person": ["\\u0048e"]}') == REFUSED


def test_multibyte_characters_split_across_tokens_and_character_boundaries():
    text = "北京😀好"
    c = Constraint("NER", text)
    raw = '{"person": ["京😀"]}'.encode()
    for cut in range(1, len(raw)):
        t = c.start()
        assert t.feed(raw[:cut]) in (OK, DONE) and t.feed(raw[cut:]) == DONE, cut
    t = c.start()
    assert t.feed(b'{"person": ["' + "京".encode()[:2]) == OK
    assert t.copy().feed(b'"') == REFUSED  # a closing quote in the middle of a character
    assert t.copy().feed("好".encode()[2:]) == REFUSED  # bytes that make another character


def test_loose_mode_accepts_case_width_and_spacing_variants():
    text = "Ｔｉｄｅｗａｔｅｒ  Analytics （葡萄牙）"
    c = Constraint("NER", text, mode="loose")
    for value in ["tidewater analytics", "TIDEWATER Analytics", "(葡萄牙)", "Ｔｉｄｅｗａｔｅｒ Analytics"]:
        assert c.start().feed(json.dumps({"a": [value]}, ensure_ascii=False).encode()) == DONE, value
    assert c.start().feed(b'{"a": ["Tidewater Labs"]}') == REFUSED
    strict = Constraint("NER", text)
    assert strict.start().feed(b'{"a": ["tidewater"]}') == REFUSED


class AllowAll:
    def allowed(self, ids, logits):
        return np.asarray(logits, dtype=np.float32).copy()


PIECES = [b"", b'"', b'{"', b'"]', b'", "', b"a", b"b", b"ab", b"ba", b"abc", b" ", b"\xe4", b"\xba\xba", b"\xe4\xba",
          b"\xba", b"c", b'c"', b'a"]', b"\\", b'\\"', b"n", b"bc", b"cab", b'"a', b'"b', "人".encode(), b"]", b"}",
          b'": [', b"person", b'x"', b"\xe7\x89\xa9"]


@given(st.lists(st.sampled_from(["a", "b", "c", "人", "物", " ", '"', "\\"]), min_size=1, max_size=12).map("".join),
       st.lists(st.sampled_from(["a", "b", "人", "c"]), max_size=3).map("".join),
       st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=len(PIECES), max_size=len(PIECES)))
def test_listed_candidates_hold_every_allowed_token_and_the_choice_is_the_best_allowed(text, prefix, scores):
    vocab = Vocab(PIECES)
    chooser = CopyChooser(vocab, AllowAll())
    chooser.TOP = 3  # force the listing path often
    tracker = Constraint("NER", text).start()
    head = b'{"person": ["' + json.dumps(prefix, ensure_ascii=False).encode()[1:-1]
    if tracker.feed(head) is not OK:
        return
    allowed = {i for i, p in enumerate(PIECES) if p and tracker.copy().feed(p) is not REFUSED}
    if tracker.clean:
        assert allowed <= chooser._span_candidates(tracker)
    logits = np.array(scores, dtype=np.float32)
    choice = chooser.choose(logits, tracker)
    if not allowed:
        assert choice.verdict == "dead"
        return
    best = max(allowed, key=lambda i: (logits[i], -i))
    assert choice.token == best


@pytest.mark.parametrize("mode", ["strict", "loose"])
def test_unknown_mode_and_off(mode):
    from knowlm_local.errors import KnowLMError
    from knowlm_local.ie.copy import check_mode

    assert check_mode(mode) == mode
    with pytest.raises(KnowLMError, match="unknown --copy mode"):
        check_mode("sometimes")
    off = Constraint("NER", "abc", mode="off")
    assert off.start().feed(b'{"person": ["not in the text"]}') == DONE


class Grammar(AllowAll):
    """What CopyDecoder needs of a grammar, allowing everything (the tracker alone judges here)."""

    def accept(self, token):
        pass

    def clone(self):
        return self

    def close(self):
        pass


def _decode(pieces: list[bytes], wanted: list[bytes], text: str, fallback: dict[bytes, float]):
    """Drive a CopyDecoder with logits that want ``wanted`` token by token, then ``fallback``'s scores:
    (the answer, the number of undos)."""
    from knowlm_local.backends.copy_decoder import CopyDecoder

    ids = {p: i for i, p in enumerate(pieces)}
    dec = CopyDecoder(Vocab(pieces), Grammar(), Constraint("NER", text), {}, max_tokens=40)
    undone = 0
    for _ in range(40):
        logits = np.zeros(len(pieces), dtype=np.float32)
        n = len(dec.tokens)
        if n < len(wanted):
            logits[ids[wanted[n]]] = 10.0
        for piece, score in fallback.items():
            logits[ids[piece]] = score
        step = dec.step(logits)
        undone += step.kind == "undo"
        if step.kind == "done":
            break
    return b"".join(pieces[t] for t in dec.tokens).decode(), undone


def test_a_duplicate_closes_the_list_at_the_previous_item_as_it_was():
    """A model that repeats an item after a ``", "`` token (one token closing an item and opening the next):
    the decoder goes back into the previous item's string, and that string must then end as it was. It used
    to grow instead ("Bob" became "Bobby" when the model's next choice was to continue the text)."""
    pieces = [b"", b'{"', b"person", b'": [', b'"', b"Ann", b'", "', b"Bob", b"by", b'"', b'"]', b"}"]
    wanted = [b'{"', b"person", b'": [', b'"', b"Ann", b'", "', b"Bob", b'", "', b"Ann", b'"']
    # second choices everywhere: run on into "Bobby", then close
    answer, undone = _decode(pieces, wanted, "Ann met Bob, then Bobby.", {b"by": 5.0, b'"]': 4.0, b"}": 3.0})
    assert undone == 1
    assert json.loads(answer) == {"person": ["Ann", "Bob"]}, answer


@pytest.mark.parametrize("opening", [[b'": [', b'"'], [b'": ["']])
def test_a_span_given_under_an_earlier_label_closes_the_next_list_empty(opening):
    """The repeat is the next list's first item. With ``[`` and the quote in separate tokens the answer goes
    back to after ``[``; with one ``["`` token there is no such point, so it goes back before the list and
    the list opens empty. Either way the answer goes on with the labels after it (one undo: a first item
    used to be undone back into its own string, a dead end that looped until the copy rule was dropped)."""
    pieces = [b"", b'{"', b"person", b'", "', b"location", b'": [', b'"', b'": ["', b"Ann", b'"]', b"]", b"}",
              b"[]", b"Paris", b'"],', b' "', b"org"]
    wanted = [b'{"', b"person", *opening, b"Ann", b'"],', b' "', b"location", *opening, b"Ann", b'"]', b"}"]
    # the model would write Ann again wherever it could
    answer, undone = _decode(pieces, wanted, "Ann lives in Paris.", {b"Ann": 6.0, b"]": 5.0, b"[]": 4.5, b"}": 4.0})
    assert undone == 1
    assert json.loads(answer) == {"person": ["Ann"], "location": []}, answer
