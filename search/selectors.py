"""Full-text search over the requesting user's tasks (docs/search.md).

The column searched is tasks_task.search_vector, a STORED generated tsvector with a GIN
index (tasks/migrations/0002_task_search_vector.py); the model does not declare it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import overload

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db.models import BooleanField, FloatField, QuerySet
from django.db.models.expressions import RawSQL

from search import highlight
from search.query import PREFIX_CONFIG, TsQuerySQL, parse, to_sql
from tasks.models import Task

_TABLE = Task._meta.db_table
_VECTOR = f'"{_TABLE}"."search_vector"'
_HEADLINE_OPTIONS = f"HighlightAll=true, StartSel={highlight.START}, StopSel={highlight.STOP}"


@dataclass(frozen=True)
class SearchHit:
    task: Task
    rank: float
    # HTML: the text escaped, matches in <mark>…</mark> (the only markup).
    title_snippet: str
    description_snippet: str


class TaskSearchResults:
    """The hits, best first, evaluated a slice at a time: what Django's Paginator (and so
    DRF's) needs, `count()` and `[a:b]`. Headlines are computed for the slice only, as
    ts_headline is the expensive part."""

    ordered = True

    def __init__(self, tasks: QuerySet[Task] | None, tsquery: TsQuerySQL | None) -> None:
        # The ranked, unevaluated queryset (None for a query without a searchable word).
        self.queryset = tasks
        self._tsquery = tsquery

    def count(self) -> int:
        return 0 if self.queryset is None else self.queryset.count()

    def __len__(self) -> int:
        return self.count()

    @overload
    def __getitem__(self, index: int) -> SearchHit: ...
    @overload
    def __getitem__(self, index: slice) -> list[SearchHit]: ...

    def __getitem__(self, index: int | slice) -> SearchHit | list[SearchHit]:
        if isinstance(index, int):
            return self[index : index + 1][0]
        if self.queryset is None or self._tsquery is None:
            return []
        tasks = list(self.queryset[index])
        marked = _headlines(tasks, self._tsquery)
        hits = []
        for task in tasks:
            title_marked, description_marked = marked[task.pk]
            title = highlight.strip_sentinels(task.title)
            description = highlight.strip_sentinels(task.description)
            hits.append(
                SearchHit(
                    task=task,
                    rank=float(task.rank),
                    title_snippet=highlight.title_snippet(title_marked, title),
                    description_snippet=highlight.description_snippet(
                        description_marked, description
                    ),
                )
            )
        return hits


def _headline_sql(column: str, tsquery: TsQuerySQL) -> RawSQL:
    # ts_headline nested once per configuration (see search.highlight), over the text with
    # the two marker characters removed so that every marker in the output is PostgreSQL's.
    sql = f'translate("{_TABLE}"."{column}", %s, \'\')'
    params: list[str] = [highlight.SENTINELS]
    for config in (*settings.SEARCH_CONFIGS, PREFIX_CONFIG):
        sql = f"ts_headline(%s::regconfig, {sql}, {tsquery.sql}, %s)"
        params = [config, *params, *tsquery.params, _HEADLINE_OPTIONS]
    return RawSQL(sql, params)


def _headlines(tasks: list[Task], tsquery: TsQuerySQL) -> dict[object, tuple[str, str]]:
    if not tasks:
        return {}
    rows = (
        Task.objects.filter(pk__in=[task.pk for task in tasks])
        .annotate(
            title_marked=_headline_sql("title", tsquery),
            description_marked=_headline_sql("description", tsquery),
        )
        .values_list("pk", "title_marked", "description_marked")
    )
    return {pk: (title, description) for pk, title, description in rows}


def task_search_for(
    *,
    user: AbstractBaseUser,
    query: str,
    status: str | None = None,
    kind: str | None = None,
) -> TaskSearchResults:
    """The user's tasks matching `query` (web-search syntax, docs/search.md), best first:
    ts_rank_cd over the title (weight A) and description (weight B), newest first among
    equals. Raises ValidationError for an empty or over-long query."""
    if not query.strip():
        raise ValidationError({"query": ["Type something to search for."]})
    limit = settings.SEARCH_MAX_QUERY_CHARS
    if len(query) > limit:
        raise ValidationError(
            {"query": [f"Ensure the query has at most {limit} characters (it has {len(query)})."]}
        )
    parsed = parse(query)
    if parsed.is_empty:
        return TaskSearchResults(None, None)
    tsquery = to_sql(parsed, configs=settings.SEARCH_CONFIGS)

    tasks = Task.objects.filter(owner=user)
    if status:
        tasks = tasks.filter(status=status)
    if kind:
        tasks = tasks.filter(kind=kind)
    # `vector @@ tsquery` with the tsquery built from constants: the planner folds it and
    # can use the GIN index (task_search_vector_idx).
    tasks = (
        tasks.filter(
            RawSQL(f"{_VECTOR} @@ {tsquery.sql}", tsquery.params, output_field=BooleanField())
        )
        .annotate(
            rank=RawSQL(f"ts_rank_cd({_VECTOR}, {tsquery.sql})", tsquery.params, FloatField())
        )
        .order_by("-rank", "-created_at", "-id")
    )
    return TaskSearchResults(tasks, tsquery)
