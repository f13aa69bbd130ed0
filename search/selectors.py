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
    """The hits, best first, evaluated a page at a time: what Django's Paginator (and so
    DRF's) needs, `count()` and `[a:b]`.

    A page is one query: the matching rows ranked, cut to the page, with the total as a
    window count and the headlines computed over the page's rows only (ts_headline is the
    expensive part). The view says which page it will ask for (`expect_page`), so the
    Paginator's `count()` runs that query and the slice that follows reuses it: one
    query per search instead of a count, a page and a headline query.
    """

    ordered = True

    def __init__(
        self,
        tasks: QuerySet[Task] | None,
        tsquery: TsQuerySQL | None,
        filters: tuple[str, list[object]] = ("", []),
    ) -> None:
        # The ranked, unevaluated queryset (None for a query without a searchable word):
        # what EXPLAIN and a count beyond the last page use.
        self.queryset = tasks
        self._tsquery = tsquery
        self._filters = filters
        self._expected: tuple[int, int] | None = None
        self._page: tuple[int, int, list[SearchHit]] | None = None
        self._count: int | None = None

    def expect_page(self, *, offset: int, limit: int) -> None:
        self._expected = (offset, limit)

    def count(self) -> int:
        if self.queryset is None or self._tsquery is None:
            return 0
        if self._count is None and self._expected is not None:
            self._fetch(*self._expected)
        if self._count is None:
            self._count = self.queryset.count()
        return self._count

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
        start = index.start or 0
        stop = index.stop
        if stop is None:
            stop = start + self.count()
        if stop <= start:
            return []
        if self._page is not None:
            offset, limit, hits = self._page
            if offset == start and stop <= offset + limit:
                return hits[: stop - start]
        return self._fetch(start, stop - start)

    def _fetch(self, offset: int, limit: int) -> list[SearchHit]:
        assert self._tsquery is not None  # noqa: S101 — for the type checker: set whenever _filters is
        rows = list(Task.objects.raw(*_page_sql(self._tsquery, self._filters, offset, limit)))
        if rows:
            self._count = int(rows[0].total)
        elif offset == 0:
            self._count = 0
        hits = [_hit(task) for task in rows]
        self._page = (offset, limit, hits)
        return hits


def _hit(task: Task) -> SearchHit:
    title = highlight.strip_sentinels(task.title)
    description = highlight.strip_sentinels(task.description)
    return SearchHit(
        task=task,
        rank=float(task.rank),
        title_snippet=highlight.title_snippet(task.title_marked, title),
        description_snippet=highlight.description_snippet(task.description_marked, description),
    )


def _headline_sql(column: str, tsquery: TsQuerySQL) -> tuple[str, list[object]]:
    # ts_headline nested once per configuration (see search.highlight), over the text with
    # the two marker characters removed so that every marker in the output is PostgreSQL's.
    sql = f"translate(page.{column}, %s, '')"
    params: list[object] = [highlight.SENTINELS]
    for config in (*settings.TASKHUB_SEARCH_CONFIGS, PREFIX_CONFIG):
        sql = f"ts_headline(%s::regconfig, {sql}, {tsquery.sql}, %s)"
        params = [config, *params, *tsquery.params, _HEADLINE_OPTIONS]
    return sql, params


_ORDER = "rank DESC, created_at DESC, id DESC"


def _page_sql(
    tsquery: TsQuerySQL, filters: tuple[str, list[object]], offset: int, limit: int
) -> tuple[str, list[object]]:
    """One page of hits with the total and the headlines (see TaskSearchResults)."""
    where, where_params = filters
    columns = ", ".join(f'"{field.column}"' for field in Task._meta.concrete_fields)
    title_sql, title_params = _headline_sql("title", tsquery)
    description_sql, description_params = _headline_sql("description", tsquery)
    # The inner query ranks and cuts; the outer one computes headlines for the page's rows
    # only, then restores the order (a subquery's order is not kept by its caller).
    sql = (
        # Only constants and %s placeholders are formatted in: search/query.py sends every
        # term and config as a parameter.
        f"SELECT page.*, {title_sql} AS title_marked, {description_sql} AS description_marked "  # noqa: S608
        f"FROM (SELECT {columns}, ts_rank({_VECTOR}, {tsquery.sql}) AS rank, "
        f"count(*) OVER () AS total FROM {_TABLE} "
        f"WHERE {where} AND {_VECTOR} @@ {tsquery.sql} "
        f"ORDER BY {_ORDER} LIMIT %s OFFSET %s) AS page "
        f"ORDER BY {_ORDER}"
    )
    params = [
        *title_params,
        *description_params,
        *tsquery.params,
        *where_params,
        *tsquery.params,
        limit,
        offset,
    ]
    return sql, params


def task_search_for(
    *,
    user: AbstractBaseUser,
    query: str,
    status: str | None = None,
    kind: str | None = None,
) -> TaskSearchResults:
    """The user's tasks matching `query` (web-search syntax, docs/search.md), best first:
    ts_rank over the title (weight A) and description (weight B), newest first among
    equals (docs/search.md says why not ts_rank_cd). Raises ValidationError for an empty
    or over-long query."""
    if not query.strip():
        raise ValidationError({"query": ["Type something to search for."]})
    limit = settings.TASKHUB_SEARCH_MAX_QUERY_CHARS
    if len(query) > limit:
        raise ValidationError(
            {"query": [f"Ensure the query has at most {limit} characters (it has {len(query)})."]}
        )
    parsed = parse(query)
    if parsed.is_empty:
        return TaskSearchResults(None, None)
    tsquery = to_sql(parsed, configs=settings.TASKHUB_SEARCH_CONFIGS)

    tasks = Task.objects.filter(owner=user)
    # The same scoping for the page query, which is written in SQL (TaskSearchResults).
    where, where_params = [f'"{_TABLE}"."owner_id" = %s'], [user.pk]
    if status:
        tasks = tasks.filter(status=status)
        where, where_params = [*where, f'"{_TABLE}"."status" = %s'], [*where_params, status]
    if kind:
        tasks = tasks.filter(kind=kind)
        where, where_params = [*where, f'"{_TABLE}"."kind" = %s'], [*where_params, kind]
    # `vector @@ tsquery` with the tsquery built from constants: the planner folds it and
    # can use the GIN index (task_search_vector_idx).
    tasks = (
        tasks.filter(
            # S611: tsquery.sql is placeholders only; the terms are its params.
            RawSQL(f"{_VECTOR} @@ {tsquery.sql}", tsquery.params, output_field=BooleanField())  # noqa: S611
        )
        .annotate(rank=RawSQL(f"ts_rank({_VECTOR}, {tsquery.sql})", tsquery.params, FloatField()))  # noqa: S611
        .order_by("-rank", "-created_at", "-id")
    )
    return TaskSearchResults(tasks, tsquery, (" AND ".join(where), where_params))
