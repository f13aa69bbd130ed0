"""What a search costs the database: one query per page, count and headlines included
(search.selectors.TaskSearchResults); pages read as a client pages through them."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from tasks.tests.factories import make_task

pytestmark = pytest.mark.django_db


def signed_in(user) -> APIClient:
    # force_authenticate: no user lookup, so the count below is the search's own.
    client = APIClient()
    client.force_authenticate(user=user)
    return client


@pytest.fixture
def alices_batch(alice):
    for number in range(45):
        make_task(owner=alice, title=f"batch job {number}", description=f"run batch {number}")
    make_task(owner=alice, title="unrelated")


def test_a_page_of_hits_with_count_and_snippets_is_one_query(
    alice, alices_batch, django_assert_num_queries
):
    with django_assert_num_queries(1):
        body = signed_in(alice).get("/search", {"query": "batch"}).json()

    assert body["count"] == 45
    assert len(body["results"]) == 20
    assert all("<mark>batch</mark>" in hit["title_snippet"] for hit in body["results"])
    assert all("<mark>batch</mark>" in hit["description_snippet"] for hit in body["results"])


def test_paging_through_shows_every_hit_once_in_rank_order(
    alice, alices_batch, django_assert_max_num_queries
):
    client = signed_in(alice)
    seen: list[str] = []
    ranks: list[float] = []
    url, params = "/search", {"query": "batch"}
    while url:
        with django_assert_max_num_queries(1):
            body = client.get(url, params).json()
        seen += [hit["task"]["title"] for hit in body["results"]]
        ranks += [hit["rank"] for hit in body["results"]]
        url, params = body["next"], {}

    assert len(seen) == len(set(seen)) == 45
    assert ranks == sorted(ranks, reverse=True)


def test_a_page_past_the_last_is_a_json_404(alice, alices_batch):
    response = signed_in(alice).get("/search", {"query": "batch", "page": 9})

    assert response.status_code == 404
    assert "detail" in response.json()


def test_an_absent_word_is_an_empty_page_in_one_query(
    alice, alices_batch, django_assert_num_queries
):
    with django_assert_num_queries(1):
        body = signed_in(alice).get("/search", {"query": "xylophone "}).json()

    assert body == {"count": 0, "next": None, "previous": None, "results": []}


def test_a_hit_renders_as_the_generic_serializer_would(alice, alices_batch):
    from rest_framework import serializers
    from rest_framework.renderers import JSONRenderer

    from search.selectors import task_search_for
    from search.serializers import SearchHitOutputSerializer

    class GenericHit(SearchHitOutputSerializer):
        to_representation = serializers.Serializer.to_representation

    hits = task_search_for(user=alice, query="batch")[0:20]

    fast = SearchHitOutputSerializer(hits, many=True).data
    generic = GenericHit(hits, many=True).data
    assert JSONRenderer().render(fast) == JSONRenderer().render(generic)
