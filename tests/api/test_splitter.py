"""Sentence splitting, table-driven: each case is fed whole, word by word and char by char."""

from __future__ import annotations

import re

import pytest

from api.splitter import SentenceSplitter

# (text, expected sentences after feed + flush)
CASES: list[tuple[str, list[str]]] = [
    # Latin terminators
    ("Hello world. How are you?", ["Hello world.", "How are you?"]),
    ("Stop! Now.", ["Stop!", "Now."]),
    ("Really?! Yes.", ["Really?!", "Yes."]),
    ("What?!? Fine!!! Ok.", ["What?!?", "Fine!!!", "Ok."]),
    ("No terminator at all", ["No terminator at all"]),
    ("   ", []),
    ("", []),
    # decimals, versions, money, times
    ("Pi is 3.14 roughly. Next.", ["Pi is 3.14 roughly.", "Next."]),
    ("Update to v1.2.3 today. Done.", ["Update to v1.2.3 today.", "Done."]),
    ("It costs $4.99. Cheap.", ["It costs $4.99.", "Cheap."]),
    ("Version 2.0 is out.", ["Version 2.0 is out."]),
    ("We grew 12.5% in Q3. Nice.", ["We grew 12.5% in Q3.", "Nice."]),
    # abbreviations and initials
    ("Mr. Smith met Dr. Jones. They talked.", ["Mr. Smith met Dr. Jones.", "They talked."]),
    ("Mrs. Brown and Ms. Green left. Bye.", ["Mrs. Brown and Ms. Green left.", "Bye."]),
    ("Use e.g. apples or i.e. fruit. Ok.", ["Use e.g. apples or i.e. fruit.", "Ok."]),
    ("J. R. R. Tolkien wrote it. Read it.", ["J. R. R. Tolkien wrote it.", "Read it."]),
    ("It starts at 9 a.m. sharp. Be there.", ["It starts at 9 a.m. sharp.", "Be there."]),
    ("Apples, pears, etc. The end.", ["Apples, pears, etc.", "The end."]),
    ("Apples, pears, etc. are fruit.", ["Apples, pears, etc. are fruit."]),
    ("He works at Acme Inc. He likes it.", ["He works at Acme Inc.", "He likes it."]),
    ("See Fig. 3 for details. Then go.", ["See Fig. 3 for details.", "Then go."]),
    ("Prof. Xavier vs. Magneto. Fight.", ["Prof. Xavier vs. Magneto.", "Fight."]),
    ("Das ist z.B. gut. Ja.", ["Das ist z.B. gut.", "Ja."]),
    ("Siehe Nr. 5 bzw. Nr. 6. Danke.", ["Siehe Nr. 5 bzw. Nr. 6.", "Danke."]),
    ("M. Dupont est là. Bonjour.", ["M. Dupont est là.", "Bonjour."]),
    ("La Sra. García llegó. Hola.", ["La Sra. García llegó.", "Hola."]),
    ("The U.S. economy grew. Good.", ["The U.S. economy grew.", "Good."]),
    # closing quotes and brackets
    ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
    ("(See above.) Next one.", ["(See above.)", "Next one."]),
    ("She asked 'why?' and left. Ok.", ["She asked 'why?' and left.", "Ok."]),
    ("He shouted “Run!” Everyone ran.", ["He shouted “Run!”", "Everyone ran."]),
    # URLs, domains, e-mail
    ("Visit example.com. Then sign up.", ["Visit example.com.", "Then sign up."]),
    ("Go to https://a.b/c?d=1. Now.", ["Go to https://a.b/c?d=1.", "Now."]),
    (
        "Mail me at bob@mail.example.org today. Thanks.",
        ["Mail me at bob@mail.example.org today.", "Thanks."],
    ),
    (
        "Open www.python.org/downloads. Install it.",
        ["Open www.python.org/downloads.", "Install it."],
    ),
    # ellipses
    ("Well... maybe not. Ok.", ["Well... maybe not.", "Ok."]),
    ("Wait... Then it happened.", ["Wait...", "Then it happened."]),
    ("Hmm… let me think. Fine.", ["Hmm… let me think.", "Fine."]),
    ("And so… It ended.", ["And so…", "It ended."]),
    # CJK and Devanagari: no space needed
    ("你好。今天天气很好！你呢？", ["你好。", "今天天气很好！", "你呢？"]),
    ("こんにちは。元気ですか？", ["こんにちは。", "元気ですか？"]),
    ("안녕하세요. 반갑습니다.", ["안녕하세요.", "반갑습니다."]),
    ("नमस्ते। आप कैसे हैं?", ["नमस्ते।", "आप कैसे हैं?"]),
    ("मैं ठीक हूँ।धन्यवाद।", ["मैं ठीक हूँ।", "धन्यवाद।"]),
    ("Привет. Как дела?", ["Привет.", "Как дела?"]),
    ("¿Qué tal? ¡Muy bien!", ["¿Qué tal?", "¡Muy bien!"]),
    ("Mixed English。然后中文。", ["Mixed English。", "然后中文。"]),
    # markdown
    ("This is **bold** and *em*. Next.", ["This is bold and em.", "Next."]),
    ("Use `pip install` now. Ok.", ["Use pip install now.", "Ok."]),
    ("See [the docs](https://x.y/z). Bye.", ["See the docs.", "Bye."]),
    ("~~old~~ new text. Done.", ["old new text.", "Done."]),
    (
        "Some _emphasis_ here. And snake_case stays.",
        ["Some emphasis here.", "And snake_case stays."],
    ),
    ("# Title\nFirst line here. Second.", ["Title", "First line here.", "Second."]),
    ("## Sub heading\nBody.", ["Sub heading", "Body."]),
    ("Intro:\n- one item\n- two item\nAfter.", ["Intro:", "one item", "two item", "After."]),
    ("Steps:\n1. Open it\n2. Close it\n", ["Steps:", "Open it", "Close it"]),
    ("* star item\n+ plus item\n", ["star item", "plus item"]),
    ("> quoted text. More.\n", ["quoted text.", "More."]),
    ("Before.\n```python\nprint('x. y. z.')\n```\nAfter.", ["Before.", "After."]),
    ("Code:\n```\na = 1. b = 2.\n```\nDone.", ["Code:", "Done."]),
    ("Para one without dot\n\nPara two.", ["Para one without dot", "Para two."]),
    ("Line one\ncontinues here. End.", ["Line one continues here.", "End."]),
    ("Above.\n\n---\n\nBelow.", ["Above.", "Below."]),
    ("**Note:** read this. Ok.", ["Note: read this.", "Ok."]),
    ("```\nonly code\n```", []),
    ("**  **", []),
    ("...", []),
    # whitespace normalisation
    ("Lots   of    space.   Here.", ["Lots of space.", "Here."]),
    ("Tabs\tand\nnewlines. Ok.", ["Tabs and newlines.", "Ok."]),
    # numbers that look like list markers inside a line
    ("Chapter 1. The start. Fine.", ["Chapter 1.", "The start.", "Fine."]),
    ("In 1999. The year.", ["In 1999.", "The year."]),
]


def _feed_all(splitter: SentenceSplitter, pieces: list[str]) -> list[str]:
    out: list[str] = []
    for piece in pieces:
        out += splitter.feed(piece)
    return out + splitter.flush()


def _words(text: str) -> list[str]:
    return re.findall(r"\S+\s*|\s+", text)


@pytest.mark.parametrize(("text", "expected"), CASES)
@pytest.mark.parametrize("mode", ["whole", "words", "chars"])
def test_table(text: str, expected: list[str], mode: str) -> None:
    pieces = {"whole": [text], "words": _words(text), "chars": list(text)}[mode]
    assert _feed_all(SentenceSplitter(), pieces) == expected


@pytest.mark.parametrize(
    ("pieces", "released_before_flush"),
    [
        (["Hello world.", " How"], ["Hello world."]),  # the space proves the end
        (["Hello world."], []),  # "." at the end: could still be "world.com"
        (["Is it?"], []),
        (["Is it? "], ["Is it?"]),
        (["你好。"], ["你好。"]),  # CJK: certain at once
        (["नमस्ते।"], ["नमस्ते।"]),
        (["Pi is 3.", "14 ok"], []),
        (["Mr.", " Smith"], []),
        (["Wait...", " then"], []),
        (["Wait...", " Then"], ["Wait..."]),
        (["etc.", " The"], ["etc."]),
    ],
)
def test_release_happens_as_soon_as_the_end_is_certain(
    pieces: list[str], released_before_flush: list[str]
) -> None:
    splitter = SentenceSplitter()
    out: list[str] = []
    for piece in pieces:
        out += splitter.feed(piece)
    assert out == released_before_flush


def test_sentences_come_out_token_by_token_without_waiting_for_flush() -> None:
    splitter = SentenceSplitter()
    released = []
    for token in ["Hi", " there", ".", " How", " are", " you", "?", " Fine", "."]:
        released.append(splitter.feed(token))
    assert released[3] == ["Hi there."]
    assert released[7] == ["How are you?"]
    assert splitter.flush() == ["Fine."]


def test_long_sentence_is_cut_at_a_clause_boundary() -> None:
    text = ("word " * 30) + "clause end, " + ("more " * 40) + "final."
    splitter = SentenceSplitter(max_sentence_chars=200)
    out = splitter.feed(text)
    assert out, "cut as soon as the buffer passes the limit, not at flush"
    assert out[0].endswith("clause end,")
    pieces = out + splitter.flush()
    assert all(len(piece) <= 200 for piece in pieces)
    assert " ".join(pieces) == " ".join(text.split())


def test_long_sentence_without_punctuation_is_cut_at_a_word() -> None:
    text = " ".join(f"w{i}" for i in range(200))
    splitter = SentenceSplitter(max_sentence_chars=100)
    pieces = splitter.feed(text) + splitter.flush()
    assert all(len(p) <= 100 for p in pieces)
    assert " ".join(pieces) == text, "no word split, nothing lost"


def test_long_cjk_text_without_spaces_is_cut_hard() -> None:
    text = "字" * 250
    splitter = SentenceSplitter(max_sentence_chars=100)
    pieces = splitter.feed(text) + splitter.flush()
    assert [len(p) for p in pieces] == [100, 100, 50]


def test_long_cjk_text_is_cut_at_a_cjk_comma() -> None:
    text = "字" * 60 + "，" + "字" * 60
    pieces = SentenceSplitter(max_sentence_chars=100).feed(text)
    assert pieces[0] == "字" * 60 + "，"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "First part, second part; third part. Done.",
            ["First part,", "second part;", "third part.", "Done."],
        ),
        ("Yes, I agree with you.", ["Yes, I agree with you."]),  # "Yes," is too short alone
        ("It cost 1,000,000 dollars, sadly.", ["It cost 1,000,000 dollars,", "sadly."]),
        ("Meet at 10:30 today, please.", ["Meet at 10:30 today,", "please."]),
        ("我们今天去公园，然后去吃饭。", ["我们今天去公园，", "然后去吃饭。"]),
    ],
)
def test_clause_granularity(text: str, expected: list[str]) -> None:
    for pieces in ([text], list(text)):
        splitter = SentenceSplitter(granularity="clause")
        assert _feed_all(splitter, pieces) == expected


def test_sentence_granularity_ignores_commas() -> None:
    assert _feed_all(SentenceSplitter(), ["First part, second part."]) == [
        "First part, second part."
    ]


def test_unknown_granularity_is_refused() -> None:
    with pytest.raises(ValueError, match="granularity"):
        SentenceSplitter(granularity="word")  # type: ignore[arg-type]


def test_flush_then_continue() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("partial") == []
    assert splitter.flush() == ["partial"]
    assert splitter.pending_chars == 0
    assert splitter.feed("Next one. ") == ["Next one."]


def test_reset_drops_the_buffer() -> None:
    splitter = SentenceSplitter()
    splitter.feed("dropped text ```\ncode")
    assert splitter.pending_chars > 0
    splitter.reset()
    assert splitter.pending_chars == 0
    assert _feed_all(splitter, ["Fresh start."]) == ["Fresh start."]


def test_pending_chars_counts_buffered_text() -> None:
    splitter = SentenceSplitter()
    splitter.feed("abc def")
    assert splitter.pending_chars == 7
    splitter.feed(". ")
    assert splitter.pending_chars <= 1


def test_code_fence_arriving_token_by_token_is_never_spoken() -> None:
    splitter = SentenceSplitter()
    tokens = [
        "Look",
        ":\n",
        "``",
        "`",
        "py",
        "thon\n",
        "x",
        " = ",
        "1.",
        " y\n",
        "``",
        "`\n",
        "Done",
        ".",
    ]
    assert _feed_all(splitter, tokens) == ["Look:", "Done."]


@pytest.mark.parametrize("pieces", [["「行こう。」彼は言った。"], list("「行こう。」彼は言った。")])
def test_cjk_closing_quote_never_starts_the_next_sentence(pieces: list[str]) -> None:
    # Released at the terminator (no waiting); a closing quote arriving later is dropped.
    out = _feed_all(SentenceSplitter(), pieces)
    assert [p.rstrip("」") for p in out] == ["「行こう。", "彼は言った。"]
