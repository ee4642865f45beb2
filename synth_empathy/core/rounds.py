"""Parse an LLM's generated dialogue text into rounds (method step 1, the parse half).

The generator is asked for at least three rounds laid out as::

    Round 1:
    Context: <speaker's emotional context>
    Response: <empathetic listener response, <= 30 words>
    Round 2:
    ...

Small models (SmolLM2-135M on a laptop) follow that loosely, so the parser accepts the
common variations seen in practice:

* markdown decoration: ``**Round 1**``, ``### Round 2``, ``**Context:**``, bullets,
  block quotes, horizontal rules, code fences;
* other round headers: ``Round 1 -``, ``Round One.``, or a bare ``1.`` numbering line,
  or no round headers at all (plain alternating Context / Response lines);
* other labels: ``Speaker:`` / ``Listener:``, ``User:`` / ``Assistant:``,
  ``Emotional context:``, ``Empathetic response:``, ``Context 2:`` ...;
* several labels on one line (``Context: ... Response: ...``);
* a context or response that continues on the following lines;
* wrapping quotes, a trailing ``(12 words)`` count, echoed ``<placeholder>`` templates;
* a preamble ("Sure! Here are three rounds:") and trailing chatter ("I hope this helps!");
* truncation mid-round and exact duplicate rounds.

It is deliberately not permissive beyond labelled text: prose with no Context/Response
style labels yields no rounds (reason ``no_rounds``), because guessing which sentence is
the speaker and which the listener would put wrong targets into the training set.

:func:`parse_rounds` never raises for any ``str``: unparsable generations are counted
with a stable reason code by the caller, not crashes (DESIGN: "Malformed ... outputs are
counted with a reason").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Stable drop-reason codes; downstream reports group by these strings.
REASON_EMPTY_OUTPUT = "empty_output"  # nothing but whitespace / markup
REASON_NO_ROUNDS = "no_rounds"  # text, but no Context/Response style label anywhere
REASON_NO_COMPLETE_ROUND = "no_complete_round"  # labels found, yet no round has both parts

#: The prompt asks for responses of at most this many words.
MAX_RESPONSE_WORDS = 30


@dataclass(frozen=True)
class Round:
    """One generated round: the speaker's emotional context and the listener's reply."""

    context: str
    response: str

    def as_dict(self) -> dict[str, str]:
        """Plain dict, the shape stored in the ``rounds`` column."""
        return {"context": self.context, "response": self.response}


@dataclass
class ParseResult:
    """What :func:`parse_rounds` found in one generation.

    ``reason`` is ``None`` exactly when ``rounds`` is non-empty. The counters describe
    what was thrown away or flagged, for the run report.
    """

    rounds: list[Round] = field(default_factory=list)
    reason: str | None = None
    #: rounds with only one of the two parts (truncated, or a response with no context)
    incomplete_rounds: int = 0
    #: exact repeats of an earlier (context, response) pair, removed
    duplicate_rounds: int = 0
    #: kept rounds whose response is longer than the word limit (kept, only counted)
    overlong_responses: int = 0
    #: the text started a second dialogue ("Round 1" again); what followed was ignored
    restarted: bool = False

    @property
    def ok(self) -> bool:
        return self.reason is None


def count_words(text: str) -> int:
    """Words as the "at most 30 words" instruction means them.

    Whitespace-separated tokens that contain at least one letter or digit, so a lone
    dash or emoji is not a word but ``don't`` and ``30-year-old`` count as one each.
    """
    return sum(1 for token in text.split() if any(ch.isalnum() for ch in token))


# --------------------------------------------------------------------------- patterns
# All patterns run on lines whose whitespace was already collapsed to single spaces,
# so none of them can backtrack over long whitespace runs.

_NUMBER_WORDS = r"one|two|three|four|five|six|seven|eight|nine|ten"

# Labels that introduce the speaker's context / the listener's response. Longer
# alternatives come first so "Speaker's context" is not read as "Speaker" + text.
_CONTEXT_LABEL = (
    r"(?:the )?speaker(?:'s|’s)? (?:emotional )?context"
    r"|emotional context|context|speaker|user|human|client"
)
_RESPONSE_LABEL = (
    r"(?:the )?listener(?:'s|’s)? (?:empathetic )?response"
    r"|empathetic (?:listener )?response|response|listener|assistant|psychologist|therapist"
)

# A label at the start of a line: case-insensitive, optional index ("Context 2:"),
# then a colon, or a dash set off by spaces ("Context - ...").
_LEADING_LABEL = re.compile(
    rf"^(?:(?P<ctx>{_CONTEXT_LABEL})|(?P<resp>{_RESPONSE_LABEL}))"
    r"(?: ?\d{1,2}| [a-z])?(?: ?\([^()]{0,40}\))?(?: ?:| [-–—](?= |$)) ?",
    re.IGNORECASE,
)

# A round header at the start of a line: "Round 1", "Round 1:", "Round 1 -", "Round One."
_ROUND_HEADER = re.compile(
    rf"^round ?(?:\d{{1,3}}|{_NUMBER_WORDS})\b(?: ?[:.)]| ?[-–—](?= |$))? ?",
    re.IGNORECASE,
)

# A bare enumeration "1." / "2)" that starts a round, only when nothing or a label
# follows it (otherwise "1. I lost my job" is ordinary text).
_ENUMERATION = re.compile(r"^\d{1,2}[.)](?: |$)")

# Markers in the middle of a line ("Context: ... Response: ..."). Matched
# case-insensitively but accepted only when capitalised (checked in code), so that
# "my user: ..." inside a sentence is not cut.
_INLINE_MARKER = re.compile(
    rf"(?<= )(?:(?P<round>round \d{{1,3}} ?:)"
    rf"|(?P<ctx>{_CONTEXT_LABEL})(?: ?\d{{1,2}})?(?: ?:| [-–—] )"
    rf"|(?P<resp>{_RESPONSE_LABEL})(?: ?\d{{1,2}})?(?: ?:| [-–—] ))",
    re.IGNORECASE,
)

# Leading markdown that carries no content: headings, block quotes, bullets.
_LEADING_MARKUP = re.compile(r"^(?:#{1,6} ?|> ?|[-+•·] )+")
# Horizontal rules and code fences, checked before emphasis markers are removed.
_RULE = re.compile(r"^[-=_~*#]{3,}$|^`{3}")
# Trailing word counts some models append to responses: "(24 words)".
_WORD_COUNT_NOTE = re.compile(r" ?[(\[]\d{1,3} ?words?[)\]]\.?$", re.IGNORECASE)
# Lines that are the model talking about its output rather than writing it. They end a
# multi-line field so closing chatter does not leak into the last response.
_CHATTER = re.compile(
    r"^(?:i hope (?:this|these|that) (?:help|example|round|dialog|conversation|meet|give|is |are "
    r"|was |were |provide|demonstrate|work)|hope (?:this|these|that) help"
    r"|note ?:|let me know|feel free|here (?:are|is) |sure[,!.]|certainly[,!.]|of course[,!.]"
    r"|end of |overall,? (?:this|these)\b|these (?:rounds|examples|conversations|dialogues)"
    r"|this (?:conversation|dialogue) (?:shows|demonstrates))",
    re.IGNORECASE,
)

_QUOTE_PAIRS = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»", "„": "“", "「": "」"}


# --------------------------------------------------------------------------- lexing
# A line becomes a list of events: ("round", ""), ("ctx", text), ("resp", text) or
# ("text", text); a blank line or a rule becomes ("break", "").

_Event = tuple[str, str]


def _strip_markup(line: str) -> str:
    """Drop emphasis and leading markdown; collapse whitespace to single spaces."""
    line = " ".join(line.split())
    # Emphasis markers carry no content; removing every "*" also cleans "*sighs*".
    line = line.replace("**", "").replace("__", "").replace("*", "").replace("`", "")
    line = _LEADING_MARKUP.sub("", line.strip())
    return line.strip()


def _split_inline(text: str) -> list[_Event]:
    """Split a line's text at capitalised mid-line markers."""
    events: list[_Event] = []
    kind, start = "text", 0
    for match in _INLINE_MARKER.finditer(text):
        if not match.group(0)[:1].isupper():
            continue
        events.append((kind, text[start : match.start()]))
        if match.group("round"):
            events.append(("round", ""))
            kind = "text"
        else:
            kind = "ctx" if match.group("ctx") else "resp"
        start = match.end()
    events.append((kind, text[start:]))
    # A leading empty "text" piece carries nothing; labelled pieces are kept even when
    # empty, because the text may follow on the next line.
    return [(k, t.strip()) for k, t in events if k != "text" or t.strip()]


def _lex_line(raw: str) -> list[_Event]:
    if _RULE.match("".join(raw.split())):
        return [("break", "")]
    line = _strip_markup(raw)
    if not line:
        return [("break", "")]
    events: list[_Event] = []
    header = _ROUND_HEADER.match(line)
    if header:
        # The number lets the builder see a restart ("Round 1" again after Round 3).
        events.append(("round", "".join(ch for ch in header.group() if ch.isdigit())))
        line = line[header.end() :]
    else:
        enum = _ENUMERATION.match(line)
        if enum and (line[enum.end() :] == "" or _LEADING_LABEL.match(line[enum.end() :])):
            events.append(("round", ""))
            line = line[enum.end() :]
    label = _LEADING_LABEL.match(line)
    if label:
        kind = "ctx" if label.group("ctx") else "resp"
        rest = _split_inline(line[label.end() :])
        if rest and rest[0][0] == "text":
            # Text right after the label belongs to it.
            rest[0] = (kind, rest[0][1])
        else:
            rest.insert(0, (kind, ""))
        events.extend(rest)
    elif line:
        events.extend(_split_inline(line))
    return events


# --------------------------------------------------------------------------- cleaning


def _clean(parts: list[str], *, is_response: bool) -> str:
    text = " ".join(p for p in parts if p).strip()
    if is_response:
        text = _WORD_COUNT_NOTE.sub("", text).strip()
    # Peel wrapping quotes, possibly nested ('"..."'), and stray label punctuation.
    for _ in range(3):
        # "|" shows up when a model tabulates "Context: ... | Response: ...".
        text = text.strip(" |").lstrip(":-–— ").strip()
        if len(text) >= 2 and _QUOTE_PAIRS.get(text[0]) == text[-1]:
            inner = text[1:-1]
            # '"Yes," he said, "no."' starts and ends with quotes without being wrapped.
            if text[0] == '"' and '"' in inner:
                break
            text = inner
        else:
            break
    text = text.strip()
    # An echoed template slot ("<speaker's emotional context>") is not content.
    if len(text) >= 2 and text[0] == "<" and text[-1] == ">":
        return ""
    return text


# --------------------------------------------------------------------------- parsing


class _Builder:
    """State machine that turns events into rounds."""

    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []
        self.incomplete = 0
        self.saw_label = False
        self.ctx: list[str] | None = None
        self.resp: list[str] | None = None
        # The field that unlabelled lines continue; None when closed.
        self.open: list[str] | None = None
        # Small models often finish a dialogue and start another at "Round 1": the
        # second one does not continue the first, so everything after it is ignored.
        self.last_round: int | None = None
        self.restarted = False

    def _has(self, parts: list[str] | None, *, is_response: bool) -> bool:
        return parts is not None and _clean(parts, is_response=is_response) != ""

    def flush(self) -> None:
        has_ctx = self._has(self.ctx, is_response=False)
        has_resp = self._has(self.resp, is_response=True)
        if has_ctx and has_resp:
            assert self.ctx is not None and self.resp is not None
            self.pairs.append((_clean(self.ctx, is_response=False), _clean(self.resp, is_response=True)))
        elif has_ctx or has_resp:
            self.incomplete += 1
        self.ctx = self.resp = self.open = None

    def feed(self, kind: str, text: str) -> None:
        if self.restarted:
            return
        if kind == "round":
            number = int(text) if text.isdigit() else None
            if number is not None and self.last_round is not None and number <= self.last_round:
                self.flush()
                self.restarted = True
                return
            self.last_round = number if number is not None else self.last_round
            self.flush()
        elif kind == "break":
            # A blank line ends a field that already has text; an empty field waits
            # for its text ("Context:\n\nI lost my job").
            if self.open is not None and any(self.open):
                self.open = None
        elif kind == "ctx":
            self.saw_label = True
            if self._has(self.ctx, is_response=False) or self.resp is not None:
                # Either a round is complete, or a context came twice without a
                # response in between: the earlier one is closed (and counted if bare).
                self.flush()
            self.ctx = [text]
            self.resp = None
            self.open = self.ctx
        elif kind == "resp":
            self.saw_label = True
            if self._has(self.resp, is_response=True):
                # A second response for one context: close the round, and this
                # response becomes an orphan below.
                self.flush()
            # With no context before it, the response is kept only to be counted as
            # incomplete when the round closes.
            self.resp = [text]
            self.open = self.resp
        else:  # text
            if self.open is None:
                return  # preamble, titles, chatter between rounds
            if _CHATTER.match(text):
                self.open = None
                return
            self.open.append(text)


def parse_rounds(text: str, *, truncated: bool = False, max_response_words: int = MAX_RESPONSE_WORDS) -> ParseResult:
    """Parse one generation into complete, de-duplicated rounds.

    ``truncated`` says the engine stopped at its token limit (vLLM's
    ``finish_reason == "length"``). A response that was still being written when the
    text ended is then likely cut mid-sentence, so that last round is counted as
    incomplete instead of kept. Without the flag the text cannot tell, and it is kept.

    Never raises for a ``str``; a non-``str`` is treated as empty output.
    """
    if not isinstance(text, str) or not text.strip():
        return ParseResult(reason=REASON_EMPTY_OUTPUT)
    builder = _Builder()
    any_content = False
    for raw in text.splitlines():
        for kind, piece in _lex_line(raw):
            any_content = any_content or kind != "break"
            builder.feed(kind, piece)
    if truncated and builder.open is not None and builder.open is builder.resp:
        # The text ended inside a response: drop it, the round is incomplete.
        builder.resp = None
    builder.flush()

    result = ParseResult(incomplete_rounds=builder.incomplete, restarted=builder.restarted)
    seen: set[tuple[str, str]] = set()
    for pair in builder.pairs:
        if pair in seen:
            result.duplicate_rounds += 1
            continue
        seen.add(pair)
        result.rounds.append(Round(context=pair[0], response=pair[1]))
        if count_words(pair[1]) > max_response_words:
            result.overlong_responses += 1

    if not result.rounds:
        if not any_content:
            result.reason = REASON_EMPTY_OUTPUT
        elif not builder.saw_label:
            result.reason = REASON_NO_ROUNDS
        else:
            result.reason = REASON_NO_COMPLETE_ROUND
    return result
