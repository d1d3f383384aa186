"""Sentence splitting for LLM text streams.

Text arrives in pieces of any size; each sentence is released the moment its end is certain,
so synthesis can start early, but never at a place that is not a sentence end (a bad split
resets prosody). Two incremental stages, each touching every input character about once:

1. Cleaning: a per-character state machine turns markdown into the text to speak. Line heads
   (list markers, headings, fences, rules, quotes) are classified as soon as their first few
   characters decide them; inline marks are dropped with at most one character of lookahead.
   It emits plain text with whitespace collapsed to single spaces, plus ``_BREAK`` wherever the
   block structure ends a piece (heading or list item end, paragraph break, code block).
2. Splitting: a scan over the cleaned text from where the last one stopped. A candidate end
   whose verdict needs text that has not arrived yet (the next character, the next word)
   stops the scan there until more text comes or ``flush`` says no more will.

Rules for the ambiguous cases:

- Latin ``.!?…`` end a sentence only when followed by whitespace, so "3.14", "v1.2.3",
  "example.com" and "a.b/c?d=1" never split. A terminator at the very end of the buffer is held
  until the next character (or ``flush``).
- A terminator followed by a closing quote or bracket, an ellipsis, and the ambiguous
  abbreviations (``AMBIGUOUS_ABBREVIATIONS``: "etc.", "Inc.", "a.m.", "U.S." ...) wait for the
  first character of the next word: lowercase means the sentence goes on ("Well... maybe",
  '"Stop!" she said'), anything else ends it ("etc. Then" splits; so does "the U.S. Army",
  a known cost of the rule).
- Titles and Latin-style abbreviations (``NON_TERMINAL_ABBREVIATIONS``) never end a sentence:
  a missed split only costs latency, a wrong one costs prosody.
- ``NUMBER_ABBREVIATIONS`` ("No.", "Fig.", "Nr.") do not end a sentence before a number or
  a lowercase word: "No. 5" holds, "I said no. Then" splits.
- A single capital letter + "." is an initial when a capitalised word follows, possibly after
  more initials ("J. R. R. Tolkien"). A chain of initials not followed by a name (at ``flush``
  or before a digit or punctuation) splits after each letter; until the following word has
  started, such a chain is held.
- German ordinal dates ("am 3. Oktober") do not split.
- CJK ``。！？．`` and Devanagari ``।॥`` end a sentence without a following space and are
  released at once, with the closing quotes/brackets right after them. The end is held for
  one more character only while a quote or bracket is open (only then can a closer follow)
  or right after a closer (Japanese 「…。」と言った goes on); holding on every ``。`` would
  cost every CJK sentence a token of latency. The price: a second mark arriving in a later
  token ("？" then "！") is dropped, and so is a closer whose opener was never seen.
- ``granularity="clause"`` also cuts after ``,;:`` + whitespace and after CJK ``，、；：``,
  but only when the clause so far has ``MIN_CLAUSE_CHARS`` letters or digits and two words
  (a CJK clause needs the letters only), so "Yes, I do.", "a, b, c" and "苹果、香蕉、橘子"
  stay whole, and "1,000,000" or "10:30" are never cut (no whitespace after the mark).
- ``granularity="none"`` (vllm-omni's default) never cuts at a sentence end or a paragraph:
  everything buffered goes out as one piece at ``flush`` (``input.done``/``input.flush``).
  The length rule below still applies, so one request cannot hold a worker for minutes.
- Control characters other than whitespace (NUL, ESC, DEL, C1) are removed as text arrives.
- A piece longer than ``max_sentence_chars`` is cut as soon as the limit is passed: after the
  last clause mark or dash, else at the last space, else hard at the limit; a clause mark or
  space in the first third of the piece is not used, so a cut never leaves a tiny piece.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final, Literal

Granularity = Literal["none", "sentence", "clause"]

# Titles and abbreviations that practically never end a sentence ("Dr. Smith", "e.g. this").
NON_TERMINAL_ABBREVIATIONS: Final = frozenset(
    {
        # English
        "mr", "mrs", "ms", "mx", "dr", "prof", "sr", "jr", "st", "mt", "rev", "fr", "gen",
        "col", "capt", "lt", "sgt", "gov", "sen", "rep", "hon", "messrs", "vs", "e.g", "i.e",
        "cf", "approx", "ca", "esp", "resp", "viz", "dept",
        # German
        "z.b", "bzw", "d.h", "vgl", "sog", "ggf", "evtl", "hr", "o.ä", "u.ä",
        # French, Spanish, Italian
        "mme", "mlle", "mmes", "sra", "srta", "dña", "ud", "uds", "dott", "sig", "p.ej",
    }
)  # fmt: skip

# Before a number these are part of the reference ("No. 5", "Fig. 3"); elsewhere they end.
NUMBER_ABBREVIATIONS: Final = frozenset(
    {"no", "nos", "nr", "fig", "figs", "vol", "vols", "p", "pp", "art", "ch", "chap", "sec",
     "eq", "tab", "ref", "abs", "bd", "op", "s", "pág", "núm"}
)  # fmt: skip

# These end sentences as often as not: they end one unless a lowercase word follows.
AMBIGUOUS_ABBREVIATIONS: Final = frozenset(
    {"etc", "inc", "ltd", "co", "corp", "llc", "plc", "bros", "al", "a.m", "p.m", "u.s",
     "u.k", "u.s.a", "e.u", "u.n", "ph.d", "usw", "u.a", "str", "cie", "ej"}
)  # fmt: skip

# "am 3. Oktober": a German ordinal date is not a sentence end.
ORDINAL_MONTHS: Final = frozenset(
    {"januar", "jänner", "februar", "märz", "april", "mai", "juni", "juli", "august",
     "september", "oktober", "november", "dezember"}
)  # fmt: skip

MIN_CLAUSE_CHARS: Final = 6
_MAX_INITIALS: Final = 8  # a longer chain of "X." is not a name
_MAX_HEAD: Final = 64  # a line head longer than this is plain text (bounds rescanning)

_BREAK: Final = "\n"  # in cleaned text: a hard piece boundary (the only newline there)
_LATIN_TERMS: Final = ".!?…؟"
_CJK_TERMS: Final = "。！？．｡।॥"
_CJK_RUN: Final = _CJK_TERMS + "!?…"
# After a terminator every quote closes: German closes „…“ with the English opening quote.
_CLOSERS: Final = "\"'”’“‘»«)]}」』】〕〉》）］｝〗"
_OPENERS: Final = "\"'“‘„‚«»([{「『【〔〈《（［｛〖¿¡"
_DEPTH_OPEN: Final = "“«(「『【〔〈《（［｛〖"
_DEPTH_CLOSE: Final = "”»)」』】〕〉》）］｝〗"
_LATIN_CLAUSE: Final = ",;:"
_CJK_CLAUSE: Final = "，、；："
_DASHES: Final = "—–"
_ORPHANS: Final = "」』】〕〉》）］｝〗”’) " + _LATIN_TERMS + _CJK_TERMS
_QUOTATIVE: Final = "とっ"  # Japanese 「…。」と言った: the quote is part of the sentence
_ASCII_PUNCT: Final = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"

_END, _NOT, _WAIT = 0, 1, 2

_PLAIN_RUN: Final = re.compile(r"[^\s*_`~\[\]!\\|]+")
_CODE_RUN: Final = re.compile(r"[^\s`]+")
_URL_STOP: Final = re.compile(r"[()\n]")
_SPEAKABLE: Final = re.compile(r"[^\W_]")
_DOTTED: Final = re.compile(r"(?:[^\W\d_]\.)+[^\W\d_]")  # "U.S", "a.m" (final dot excluded)
_CJK: Final = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_STOPS_SENTENCE: Final = re.compile(
    "[" + re.escape(_BREAK + _LATIN_TERMS + _CJK_TERMS + _DEPTH_OPEN + _DEPTH_CLOSE + '"') + "]"
)
_STOPS_CLAUSE: Final = re.compile(
    "["
    + re.escape(
        _BREAK + _LATIN_TERMS + _CJK_TERMS + _DEPTH_OPEN + _DEPTH_CLOSE + '"'
        + _LATIN_CLAUSE + _CJK_CLAUSE
    )
    + "]"
)  # fmt: skip
# Control characters (NUL, ESC, DEL, C1) carry nothing to speak and make engines fail on the
# sentence later; dropped on arrival. Tab, newline, CR and NEL are whitespace and stay.
_CONTROL: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f]")
_STOPS_NONE: Final = re.compile(r"(?!)")  # matches nothing: only the length rule cuts


def speakable(text: str) -> bool:
    """Whether `text` has anything to speak: a letter or digit (not only spaces, punctuation
    or symbols)."""
    return _SPEAKABLE.search(text) is not None


def _run_len(s: str, p: int, ch: str) -> int:
    q = p
    while q < len(s) and s[q] == ch:
        q += 1
    return q - p


def _lower_check(nxt: str, final: bool) -> int:
    """The verdict when only a lowercase next word means 'the sentence goes on'."""
    if not nxt:
        return _END if final else _WAIT
    return _NOT if nxt.islower() else _END


def _long_enough(fragment: str) -> bool:
    # Letters and digits only: "苹果、香蕉、" is an enumeration, not a clause.
    if len(_SPEAKABLE.findall(fragment)) < MIN_CLAUSE_CHARS:
        return False
    return " " in fragment.strip() or _CJK.search(fragment) is not None


class SentenceSplitter:
    """Cuts a stream of LLM text into speakable sentences, each released once it is certain."""

    # Declared here: flush() reads it before its first assignment in the class's text.
    _buf: str

    def __init__(
        self, *, max_sentence_chars: int = 300, granularity: Granularity = "sentence"
    ) -> None:
        if max_sentence_chars < 1:
            raise ValueError("max_sentence_chars must be at least 1")
        if granularity not in ("none", "sentence", "clause"):
            raise ValueError(f"unknown granularity {granularity!r}")
        self._max = max_sentence_chars
        self._clause = granularity == "clause"
        self._whole = granularity == "none"
        self._stops = {"none": _STOPS_NONE, "clause": _STOPS_CLAUSE}.get(
            granularity, _STOPS_SENTENCE
        )
        self.reset()

    # --- public API ----------------------------------------------------------------------

    def feed(self, text: str) -> list[str]:
        """Add text; return the sentences whose end is now certain, in order."""
        text = _CONTROL.sub("", text)
        if not text:
            return []
        self._append(self._clean(text, eof=False))
        return self._split(final=False)

    def flush(self) -> list[str]:
        """Release everything buffered, as if the text ended here; the splitter goes on."""
        self._append(self._clean("", eof=True))
        out = self._split(final=True)
        self._emit(out, self._buf)
        self._buf = ""
        self._pos = 0
        self._depth = 0
        self._dq = False
        return out

    def reset(self) -> None:
        """Drop all buffered text and markdown state (barge-in)."""
        # Stage 1: cleaning.
        self._hold = ""  # raw tail waiting for one more character of lookahead
        self._at_bol = True  # at a line start, classifying its head
        self._head = ""  # raw characters of the line head seen so far
        self._kind = "plain"  # the current line: plain quote heading item table code blank
        self._prev_kind = "plain"
        self._fence = ""  # the opening fence while inside a fenced code block
        self._code_ticks = 0  # backticks that opened the current inline code span
        self._url_depth = 0  # > 0 while dropping a link destination "(...)"
        self._prev_raw = " "
        self._last_out = _BREAK  # last character emitted; BREAK: nothing to separate from
        self._line_text = False  # the current line has emitted text (table cell separators)
        self._cell_sep = False  # a table cell ended: separate it from the next one
        # Stage 2: splitting.
        self._buf = ""  # cleaned text not yet released
        self._pos = 0  # where the next scan of _buf starts
        self._depth = 0  # open brackets/curly quotes, for closers after a CJK end
        self._dq = False  # an ASCII double quote is open

    @property
    def pending_chars(self) -> int:
        """Characters buffered and not yet released."""
        return len(self._buf) + len(self._hold) + len(self._head)

    def _append(self, cleaned: str) -> None:
        if cleaned and self._whole:
            # No piece boundaries at all: a paragraph break is just a space.
            cleaned = cleaned.replace(_BREAK, " ")
        if cleaned:
            # With the only reference in a local, CPython grows the string in place instead
            # of copying the whole pending sentence on every token.
            buf = self._buf
            self._buf = ""
            buf += cleaned
            self._buf = buf

    # --- stage 1: markdown to speakable text ---------------------------------------------

    def _put(self, out: list[str], text: str) -> None:
        if self._cell_sep:
            out.append(", ")
            self._cell_sep = False
        out.append(text)
        self._last_out = text[-1]
        self._line_text = True

    def _space(self, out: list[str]) -> None:
        if self._last_out != " " and self._last_out != _BREAK:
            out.append(" ")
            self._last_out = " "

    def _brk(self, out: list[str]) -> None:
        if self._last_out != _BREAK:
            out.append(_BREAK)
            self._last_out = _BREAK

    def _clean(self, text: str, eof: bool) -> str:
        s = self._hold + text
        self._hold = ""
        out: list[str] = []
        n = len(s)
        p = 0
        head_new = 0  # head characters taken from this `s`: those can be replayed in place
        while p < n:
            c = s[p]
            if self._at_bol:
                if c == "\n":
                    rest = self._classify(out, eol=True, eof=False)
                else:
                    self._head += c
                    p += 1
                    head_new += 1
                    rest = self._classify(out, eol=False, eof=False)
                if rest is not None:
                    # Decided: what follows the marker is ordinary inline text.
                    if len(rest) <= head_new:
                        p -= len(rest)
                    else:  # the head began in an earlier feed; happens once per call
                        s = rest + s[p:]
                        n = len(s)
                        p = 0
                    head_new = 0
                continue
            if c == "\n":
                self._end_line(out)
                p += 1
                head_new = 0
                continue
            if self._kind == "code":
                nl = s.find("\n", p)
                p = n if nl < 0 else nl
                continue
            if self._url_depth:
                m = _URL_STOP.search(s, p)
                if m is None:
                    p = n
                    continue
                p = m.start()
                ch = m.group()
                if ch == "\n":  # an unclosed destination ends with its line
                    self._url_depth = 0
                    continue
                self._url_depth += 1 if ch == "(" else -1
                p += 1
                continue
            if self._code_ticks:
                if c == "`":
                    run = _run_len(s, p, "`")
                    if p + run == n and not eof:
                        self._hold = s[p:]
                        break
                    if run == self._code_ticks:
                        self._code_ticks = 0
                    p += run
                    self._prev_raw = "`"
                elif c.isspace():
                    self._space(out)
                    p += 1
                else:
                    m = _CODE_RUN.match(s, p)
                    assert m is not None
                    self._put(out, m.group())
                    p = m.end()
                continue
            m = _PLAIN_RUN.match(s, p)
            if m is not None:
                run_text = m.group()
                self._put(out, run_text)
                self._prev_raw = run_text[-1]
                p = m.end()
                continue
            if c.isspace():
                self._space(out)
                self._prev_raw = " "
                p += 1
                continue
            if c == "|":
                # Table cells become a list; outside tables a pipe is just a character.
                if self._kind != "table":
                    self._put(out, "|")
                else:
                    self._cell_sep = self._line_text  # only between cells, not after the last
                self._prev_raw = c
                p += 1
                continue
            if c == "`":
                run = _run_len(s, p, "`")
                if p + run == n and not eof:
                    self._hold = s[p:]
                    break
                self._code_ticks = run
                self._prev_raw = c
                p += run
                continue
            # The remaining marks need one character of lookahead.
            if p + 1 >= n and not eof:
                self._hold = s[p:]
                break
            nxt = s[p + 1] if p + 1 < n else ""
            step = 1
            if c == "_":
                if self._prev_raw.isalnum() and nxt.isalnum():
                    self._put(out, c)  # snake_case, not emphasis
            elif c == "*":
                prev = self._prev_raw
                if (prev.isspace() and nxt.isspace()) or (prev.isdigit() and nxt.isdigit()):
                    self._put(out, c)  # "2 * 3", not emphasis
            elif c == "~":
                if nxt == "~":
                    step = 2
                else:
                    self._put(out, c)  # "~5 min"
            elif c == "]":
                if nxt == "(":
                    self._url_depth = 1
                    step = 2
            elif c == "!":
                if nxt != "[":  # "![" opens an image: its alt text is spoken, the "!" is not
                    self._put(out, c)
            elif c == "\\":
                if nxt and nxt in _ASCII_PUNCT:
                    self._put(out, nxt)
                    step = 2
                else:
                    self._put(out, c)
            # "[" is dropped: link text is spoken either way.
            self._prev_raw = s[p + step - 1]
            p += step
        if eof and self._at_bol and self._head:
            rest = self._classify(out, eol=False, eof=True)
            if rest:
                out.append(self._clean(rest, eof=True))
        return "".join(out)

    def _end_line(self, out: list[str]) -> None:
        kind = self._kind
        if kind == "plain" or kind == "quote":
            # A soft break for now; the next line's head may still turn it into a BREAK.
            self._space(out)
        elif kind in ("heading", "item", "table"):
            self._brk(out)
        self._prev_kind = kind
        self._code_ticks = 0
        self._url_depth = 0
        self._line_text = False
        self._cell_sep = False
        self._at_bol = True
        self._head = ""
        self._prev_raw = " "

    def _start_line(self, out: list[str], kind: str, rest: str) -> str:
        if not (kind == self._prev_kind and kind in ("plain", "quote")):
            self._brk(out)
        self._kind = kind
        self._at_bol = False
        self._head = ""
        self._prev_raw = " "
        return rest

    def _classify(self, out: list[str], eol: bool, eof: bool) -> str | None:
        """Classify the line head; None while undecided, else the inline text to replay."""
        h = self._head
        done = eol or eof or len(h) > _MAX_HEAD
        b = h.lstrip()
        if self._fence:
            if not b:
                return self._start_line(out, "code", "") if done else None
            f = self._fence
            run = len(b) - len(b.lstrip(f[0]))
            if run >= len(f):
                self._fence = ""  # closing fence; the rest of its line is dropped
            elif run == len(b) and run and not done:
                return None
            return self._start_line(out, "code", "")
        quote = False
        while b.startswith(">"):
            quote = True
            b = b[1:].lstrip()
        plain = "quote" if quote else "plain"
        if not b:
            if not done:
                return None
            return self._start_line(out, "blank" if eol else plain, "")
        c0 = b[0]
        if c0 in "`~":
            run = len(b) - len(b.lstrip(c0))
            if run == len(b) and not done:
                return None
            if run >= 3:
                self._fence = c0 * run
                return self._start_line(out, "code", "")
            return self._start_line(out, plain, b)
        if c0 == "#":
            run = len(b) - len(b.lstrip("#"))
            if run == len(b) and not done:
                return None
            if run <= 6 and (run == len(b) or b[run] in " \t"):
                return self._start_line(out, "heading", b[run:])
            return self._start_line(out, plain, b)
        if c0 in "-*_=+":
            if c0 != "+" and not b.strip(c0 + " \t"):
                # Only marker characters so far: a rule ("---", "* * *"), an empty item,
                # or the start of "- item" / "**bold**".
                if not done:
                    return None
                return self._start_line(out, "blank" if eol else plain, "" if eol else b)
            if c0 in "-*+":
                if len(b) == 1 and not done:
                    return None
                if len(b) > 1 and b[1] in " \t":
                    return self._start_line(out, "item", b[2:])
            return self._start_line(out, plain, b)
        if "0" <= c0 <= "9":
            digits = len(b) - len(b.lstrip("0123456789"))
            if digits > 3:  # "2024. What a year" is not a list item
                return self._start_line(out, plain, b)
            if digits == len(b) or (digits + 1 == len(b) and b[digits] in ".)"):
                if not done:
                    return None
                if eol and digits < len(b):
                    return self._start_line(out, "item", "")
                return self._start_line(out, plain, b)
            if b[digits] in ".)" and b[digits + 1] in " \t":
                return self._start_line(out, "item", b[digits + 1 :])
            return self._start_line(out, plain, b)
        if c0 == "|":
            return self._start_line(out, "table", b)
        return self._start_line(out, plain, b)

    # --- stage 2: sentence boundaries ----------------------------------------------------

    def _emit(self, out: list[str], piece: str) -> None:
        # A closer or terminator starts a piece only when it came too late for the previous
        # one (a CJK end is released at once) or its opener is long gone.
        text = " ".join(piece.split()).replace(" ,", ",").lstrip(_ORPHANS)
        if _SPEAKABLE.search(text):
            out.append(text)

    def _split(self, final: bool) -> list[str]:
        buf = self._buf
        n = len(buf)
        start = 0
        i = self._pos
        limit = self._max
        out: list[str] = []
        while True:
            # Decide only on what a feed that stopped at the limit would have seen, so the
            # result does not depend on how the text was chunked.
            full = n - start > limit
            end = start + limit + 1 if full else n
            at_end = final and end == n
            if i >= end:
                if not full:
                    break
                start, i = self._cut(out, buf, start, i)
                continue
            m = self._stops.search(buf, i, end)
            if m is None:
                i = end
                continue
            i = m.start()
            c = buf[i]
            if c == _BREAK:
                self._emit(out, buf[start:i])
                self._depth = 0
                self._dq = False
                start = i + 1
                while start < n and buf[start] == " ":
                    start += 1
                i = start
                continue
            if c in _LATIN_TERMS:
                verdict, j, k = self._latin(buf, start, i, end, at_end)
            elif c in _CJK_TERMS:
                verdict, j, k = self._cjk(buf, start, i, end, at_end)
            elif c in _LATIN_CLAUSE or c in _CJK_CLAUSE:
                verdict, j, k = self._clause_end(buf, start, i, end, at_end)
            else:
                self._track(c)
                i += 1
                continue
            if verdict == _WAIT:
                if not full:
                    break
                start, i = self._cut(out, buf, start, i)
                continue
            for ch in buf[j:k]:
                self._close(ch)
            if verdict == _END:
                self._emit(out, buf[start:k])
                start = k
                while start < n and buf[start] == " ":
                    start += 1
                k = start
            i = k
        self._buf = buf[start:]
        self._pos = i - start
        return out

    def _track(self, c: str) -> None:
        if c == '"':
            self._dq = not self._dq
        elif c in _DEPTH_OPEN:
            self._depth += 1
        elif c in _DEPTH_CLOSE and self._depth:
            self._depth -= 1

    def _close(self, c: str) -> None:
        if c == '"':
            self._dq = not self._dq
        elif c not in "'’" and self._depth:
            self._depth -= 1

    def _cut(self, out: list[str], buf: str, start: int, i: int) -> tuple[int, int]:
        """Release the first ``limit`` characters at the best place; the new (start, i)."""
        hi = start + self._max  # buf[hi] exists: the piece is longer than the limit
        lo = start + max(1, self._max // 3)
        cut = 0
        for q in range(hi, lo - 1, -1):
            ch = buf[q - 1]
            if ch in _CJK_CLAUSE or ch in _DASHES:
                cut = q
            elif buf[q] == " " and (
                ch in _LATIN_CLAUSE or (ch == "-" and q - 2 >= start and buf[q - 2] == " ")
            ):
                cut = q
            if cut:
                break
        if not cut:
            cut = buf.rfind(" ", lo, hi + 1)
        if cut <= start:
            cut = hi
            # CJK and Devanagari have no spaces: never separate a combining mark from its base.
            while cut > lo and unicodedata.category(buf[cut])[0] == "M":
                cut -= 1
        self._emit(out, buf[start:cut])
        start = cut
        while start < len(buf) and buf[start] == " ":
            start += 1
        return start, max(i, start)

    def _latin(self, buf: str, start: int, i: int, end: int, final: bool) -> tuple[int, int, int]:
        j = i + 1
        while j < end and buf[j] in _LATIN_TERMS:
            j += 1
        k = j
        while k < end and buf[k] in _CLOSERS:
            k += 1
        if k == end:
            return (_END if final else _WAIT), j, k
        if buf[k] != " " and buf[k] != _BREAK:
            return _NOT, j, k  # "3.14", "example.com", "a.b/c?d=1"
        m = k
        while m < end and buf[m] == " ":
            m += 1
        nxt = buf[m] if m < end else ""
        if nxt == _BREAK:
            return _END, j, k
        run = buf[i:j]
        closed = k > j
        if "?" in run or "!" in run or "؟" in run:
            verdict = _lower_check(nxt, final) if closed else _END
        elif len(run) > 1 or "…" in run:
            verdict = _lower_check(nxt, final)  # "Well... maybe" goes on
        else:
            verdict = self._period(buf, start, i, m, end, nxt, final, closed)
        return verdict, j, k

    def _period(
        self, buf: str, start: int, i: int, m: int, end: int, nxt: str, final: bool, closed: bool
    ) -> int:
        """Verdict for a single "." followed by whitespace: is the word before it an end?"""
        if i > start and buf[i - 1] == " ":
            return _NOT  # " ." is a stray mark or a spaced ellipsis ". . ."
        space = buf.rfind(" ", start, i)
        word = buf[space + 1 if space >= 0 else start : i].lstrip(_OPENERS)
        if not word:
            return _END
        key = word.lower() if len(word) > 1 else word
        if key in NON_TERMINAL_ABBREVIATIONS:
            return _NOT
        if key in NUMBER_ABBREVIATIONS:
            return _NOT if nxt.isdigit() else _lower_check(nxt, final)
        if len(word) == 1 and word.isupper():
            return self._initials(buf, m, end, final)
        if key in AMBIGUOUS_ABBREVIATIONS or _DOTTED.fullmatch(word):
            return _lower_check(nxt, final)
        if word.isdigit() and len(word) <= 2:
            if not nxt.isupper():
                return _END if nxt or final else _WAIT
            q = m
            while q < end and buf[q].isalpha():
                q += 1
            month = buf[m:q].lower()
            if q == end and not final:
                return _WAIT if any(name.startswith(month) for name in ORDINAL_MONTHS) else _END
            return _NOT if month in ORDINAL_MONTHS else _END
        return _lower_check(nxt, final) if closed else _END

    def _initials(self, buf: str, p: int, end: int, final: bool) -> int:
        """After "X. ": a name follows (possibly after more initials) → not an end."""
        for _ in range(_MAX_INITIALS):
            if p >= end:
                return _END if final else _WAIT
            c = buf[p]
            if c == _BREAK:
                return _END
            if c.islower():
                return _NOT
            if not c.isupper():
                return _END  # a digit or punctuation
            if p + 1 >= end:
                return _NOT if final else _WAIT
            if buf[p + 1] != ".":
                return _NOT  # a capitalised word: the name
            if p + 2 >= end:
                return _END if final else _WAIT
            if buf[p + 2] != " ":
                return _END if buf[p + 2] == _BREAK else _NOT
            p += 3
            while p < end and buf[p] == " ":
                p += 1
        return _END

    def _cjk(self, buf: str, start: int, i: int, end: int, final: bool) -> tuple[int, int, int]:
        j = i + 1
        while j < end and buf[j] in _CJK_RUN:
            j += 1
        if buf[i] == "．" and j == i + 1 and i > start and buf[i - 1].isdigit():
            # "３．１４": a full-width decimal point
            if j == end:
                return (_END if final else _WAIT), j, j
            if buf[j].isdigit():
                return _NOT, j, j
        k = j
        while k < end and buf[k] in _CLOSERS:
            k += 1
        if k == end and not final and (k > j or self._depth or self._dq):
            # A closer may follow only while a quote is open; after a closer, a quotative
            # particle may follow. Otherwise the end is certain at once.
            return _WAIT, j, k
        if k > j and k < end and buf[k] in _QUOTATIVE:
            return _NOT, j, k
        return _END, j, k

    def _clause_end(
        self, buf: str, start: int, i: int, end: int, final: bool
    ) -> tuple[int, int, int]:
        k = i + 1
        if buf[i] in _LATIN_CLAUSE:
            if k == end:
                return (_NOT if final else _WAIT), k, k
            if buf[k] != " ":
                return _NOT, k, k  # "1,000,000", "10:30", "https://"
        return (_END if _long_enough(buf[start:k]) else _NOT), k, k
