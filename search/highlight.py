"""ts_headline output -> an HTML-safe snippet in which <mark>…</mark> is the only markup.

PostgreSQL marks matches with two control characters that cannot occur in the text (the
selector strips them from the text first), never with "<mark>" itself: ts_headline does
not escape, so a title like `<img src=x onerror=alert(1)>` would come back as live markup.
Here the text between the marks is HTML-escaped and only then are the marks turned into
<mark> tags.

One ts_headline call per configuration, nested, marks what that configuration matches
(english does not stem Russian, russian and simple do not stem English the same way), so
a word may be wrapped twice; any depth above zero counts as marked.
"""

from __future__ import annotations

import logging
import re
from html import escape

logger = logging.getLogger(__name__)

START = "\x02"
STOP = "\x03"
SENTINELS = START + STOP

# A description snippet: about this many characters, starting a little before the first
# match so the reader sees it in context.
SNIPPET_CHARS = 200
CONTEXT_BEFORE = 60
ELLIPSIS = "…"

_SPACES = re.compile(r"\s+")


def strip_sentinels(text: str) -> str:
    return text.translate({ord(START): None, ord(STOP): None})


def marked_spans(marked: str, original: str) -> list[tuple[int, int]]:
    """Offsets in `original` of the marked runs of `marked` (ts_headline's output).

    Returns no spans if `marked` is not exactly `original` plus marks: better an
    unhighlighted snippet than one built from text we did not expect.
    """
    spans: list[tuple[int, int]] = []
    depth = 0
    position = 0
    start = 0
    plain: list[str] = []
    for char in marked:
        if char == START:
            if depth == 0:
                start = position
            depth += 1
        elif char == STOP:
            depth = max(0, depth - 1)
            if depth == 0 and position > start:
                spans.append((start, position))
        else:
            plain.append(char)
            position += 1
    if "".join(plain) != original:
        # ts_headline drops words over 2047 characters, for one.
        logger.info("ts_headline changed the text; the snippet is shown unhighlighted")
        return []
    return _merge(spans)


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def render(text: str, spans: list[tuple[int, int]], *, collapse_spaces: bool = False) -> str:
    """`text` HTML-escaped, with each span wrapped in <mark>."""
    out: list[str] = []
    cursor = 0

    def piece(chunk: str) -> str:
        return escape(_SPACES.sub(" ", chunk) if collapse_spaces else chunk, quote=True)

    for start, end in spans:
        out.append(piece(text[cursor:start]))
        out.append(f"<mark>{piece(text[start:end])}</mark>")
        cursor = end
    out.append(piece(text[cursor:]))
    return "".join(out)


def title_snippet(marked: str, original: str) -> str:
    """The whole title (at most 200 characters), matches marked."""
    return render(original, marked_spans(marked, original))


def description_snippet(marked: str, original: str, *, size: int = SNIPPET_CHARS) -> str:
    """About `size` characters of the description around its first match (or its start),
    cut at spaces, with … where it was cut."""
    spans = marked_spans(marked, original)
    if len(original) <= size:
        return render(original, spans, collapse_spaces=True).strip()
    anchor = spans[0][0] if spans else 0
    start = max(0, anchor - CONTEXT_BEFORE)
    if start > 0:
        space = original.find(" ", start, anchor)
        start = space + 1 if space != -1 else start
    end = min(len(original), start + size)
    if spans and spans[0][1] > end:
        end = spans[0][1]
    if end < len(original):
        space = original.rfind(" ", max(start, spans[0][1] if spans else start), end)
        end = space if space > start else end
    window = [
        (max(s, start) - start, min(e, end) - start) for s, e in spans if s < end and e > start
    ]
    body = render(original[start:end], window, collapse_spaces=True).strip()
    return f"{ELLIPSIS if start > 0 else ''}{body}{ELLIPSIS if end < len(original) else ''}"
