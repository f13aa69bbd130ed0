from __future__ import annotations

from typing import Any

from rest_framework import serializers

from search.selectors import SearchHit
from tasks.api.serializers import TaskOutputSerializer
from tasks.models import TaskStatus


class SearchFilterSerializer(serializers.Serializer):
    # Not trimmed: a trailing space tells the search the last word is finished (no prefix
    # match). Emptiness and length are checked by search.selectors.task_search_for.
    # min_length is for the schema (a blank query is refused by the selector, with its
    # own message; DRF returns "" before checking min_length).
    query = serializers.CharField(trim_whitespace=False, allow_blank=True, min_length=1)
    status = serializers.ChoiceField(choices=TaskStatus.choices, required=False)
    kind = serializers.CharField(max_length=64, required=False)


class SearchHitOutputSerializer(serializers.Serializer):
    """A hit. The fields are for the OpenAPI schema; the representation is written out as
    TaskOutputSerializer's is (building the fields per hit cost more than the hit)."""

    task = TaskOutputSerializer()
    rank = serializers.FloatField()
    title_snippet = serializers.CharField(
        help_text="The title, HTML-escaped, matches in <mark>…</mark> (the only markup)."
    )
    description_snippet = serializers.CharField(
        help_text="About 200 characters of the description around the first match, "
        "HTML-escaped, matches in <mark>…</mark> (the only markup)."
    )

    def to_representation(self, hit: SearchHit) -> dict[str, Any]:
        return {
            "task": _TASK.to_representation(hit.task),
            "rank": float(hit.rank),
            "title_snippet": str(hit.title_snippet),
            "description_snippet": str(hit.description_snippet),
        }


_TASK = TaskOutputSerializer()


class SearchPageOutputSerializer(serializers.Serializer):
    """The response envelope, for the OpenAPI schema (DRF's pagination builds it)."""

    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = SearchHitOutputSerializer(many=True)
