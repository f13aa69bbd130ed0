"""The search box's text -> one PostgreSQL tsquery, as SQL with parameters.

The syntax is websearch_to_tsquery's: words are AND-ed, `"a phrase"` keeps its words in
order, `-word` or `-"a phrase"` excludes, `or` between terms means either. On top of it
the last word, while it is still being typed (the query does not end with a space), also
matches as a prefix: `deplo` finds "deployment".

Why parse here instead of handing the whole text to websearch_to_tsquery once per
configuration and OR-ing the results: an exclusion would leak. `deploy -задачи` becomes
`deploy & !задачи` under english (which does not stem Russian) OR `deploy & !задач` under
russian; a task saying "задача" passes the english half, so the exclusion is ignored.
Built term by term instead, every term is "any configuration matches it" and an
exclusion is "no configuration matches it".

Nothing from the user is ever put into the SQL text: each term goes to
websearch_to_tsquery / phraseto_tsquery as a parameter (they accept any text and never
raise), and the prefix term is reduced to letters and digits before it reaches
to_tsquery, whose own syntax (& | ! ( ) : * <->) could otherwise fail the query.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Configuration used for prefix matching: whole, unstemmed words (see the migration).
PREFIX_CONFIG = "simple"
# A prefix shorter than this would match most of the table.
MIN_PREFIX_CHARS = 2

_TOKEN = re.compile(r'(?P<neg>-*)(?:"(?P<phrase>[^"]*)"?|(?P<word>[^\s"]+))')
_ALNUM = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class Term:
    text: str
    phrase: bool = False
    negated: bool = False


@dataclass(frozen=True)
class ParsedQuery:
    # OR of AND-groups: [[a, b], [c]] is (a AND b) OR c, as in websearch_to_tsquery.
    groups: tuple[tuple[Term, ...], ...]
    # Letters/digits chunks of the last word while it is being typed, else empty.
    prefix_chunks: tuple[str, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.groups


@dataclass(frozen=True)
class TsQuerySQL:
    sql: str
    params: tuple[str, ...]


def parse(text: str) -> ParsedQuery:
    groups: list[list[Term]] = [[]]
    last: Term | None = None
    for match in _TOKEN.finditer(text):
        negated = bool(match.group("neg"))
        phrase = match.group("phrase")
        if phrase is not None:
            last = Term(phrase.strip(), phrase=True, negated=negated) if phrase.strip() else None
        else:
            word = match.group("word").lstrip("-")
            if not word:
                last = None
                continue
            if word.lower() == "or" and not negated:
                if groups[-1]:
                    groups.append([])
                last = None
                continue
            last = Term(word, negated=negated)
        if last is not None:
            groups[-1].append(last)
    kept = tuple(tuple(group) for group in groups if group)
    prefix: tuple[str, ...] = ()
    typing = bool(text) and not text[-1].isspace()
    if typing and last is not None and not last.phrase and not last.negated:
        chunks = tuple(chunk.lower() for chunk in _ALNUM.findall(last.text))
        if chunks and len(chunks[-1]) >= MIN_PREFIX_CHARS:
            prefix = chunks
    return ParsedQuery(kept, prefix)


def to_sql(parsed: ParsedQuery, *, configs: list[str] | tuple[str, ...]) -> TsQuerySQL:
    """One tsquery expression; `configs` are regconfig names from settings, sent as
    parameters like everything else."""
    params: list[str] = []
    last_term = parsed.groups[-1][-1] if parsed.groups else None

    def term_sql(term: Term) -> str:
        function = "phraseto_tsquery" if term.phrase else "websearch_to_tsquery"
        alternatives = []
        for config in configs:
            alternatives.append(f"{function}(%s::regconfig, %s)")
            params.extend((config, term.text))
        if term is last_term and parsed.prefix_chunks:
            # "foo-ba" while typing: foo and ba:* (each chunk is letters/digits only).
            *whole, partial = parsed.prefix_chunks
            alternatives.append("to_tsquery(%s::regconfig, %s)")
            params.extend((PREFIX_CONFIG, " & ".join([*whole, f"{partial}:*"])))
        sql = "(" + " || ".join(alternatives) + ")"
        return f"!!{sql}" if term.negated else sql

    ors = []
    for group in parsed.groups:
        ors.append("(" + " && ".join(term_sql(term) for term in group) + ")")
    return TsQuerySQL("(" + " || ".join(ors) + ")", tuple(params))
