"""GET /search as a client sees it: ranking, scoping, languages, syntax, snippets, errors."""

from __future__ import annotations

import pytest
from django.test import override_settings

from tasks.models import TaskStatus
from tasks.tests.factories import make_task

pytestmark = pytest.mark.django_db


def search(client, query: str, **params):
    return client.get("/search", {"query": query, **params})


def titles(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [hit["task"]["title"] for hit in response.json()["results"]]


def test_a_title_match_ranks_above_a_description_only_match(alice, client_for):
    # Made first so that the newest-first tie-break alone would put it last.
    make_task(owner=alice, title="Kubernetes upgrade", description="cluster work")
    make_task(owner=alice, title="Weekly chores", description="look at the kubernetes nodes")
    make_task(owner=alice, title="Unrelated", description="nothing to see")

    response = search(client_for(alice), "kubernetes")

    assert titles(response) == ["Kubernetes upgrade", "Weekly chores"]
    first, second = response.json()["results"]
    assert first["rank"] > second["rank"] > 0


def test_the_response_carries_the_task_rank_and_snippets(alice, client_for):
    task = make_task(owner=alice, title="Nightly backup", description="copy the database")

    body = search(client_for(alice), "backup").json()

    assert body["count"] == 1
    assert body["next"] is None and body["previous"] is None
    (hit,) = body["results"]
    assert hit["task"]["id"] == str(task.pk)
    assert hit["task"]["status"] == "pending"
    assert set(hit["task"]) >= {"id", "title", "description", "kind", "status", "progress"}
    assert isinstance(hit["rank"], float)
    assert hit["title_snippet"] == "Nightly <mark>backup</mark>"
    assert hit["description_snippet"] == "copy the database"


def test_bob_never_sees_alices_tasks(alice, bob, client_for):
    make_task(owner=alice, title="Alice's secret deployment")
    make_task(owner=None, title="Anonymous legacy deployment")

    assert titles(search(client_for(bob), "deployment")) == []
    assert titles(search(client_for(alice), "deployment")) == ["Alice's secret deployment"]


def test_anonymous_search_is_401_in_json(alice, client_for):
    make_task(owner=alice, title="deployment")

    response = search(client_for(None), "deployment")

    assert response.status_code == 401
    assert "detail" in response.json()


def test_a_session_login_may_search_too(alice, client):
    make_task(owner=alice, title="deployment")
    client.force_login(alice)

    assert titles(search(client, "deployment")) == ["deployment"]


@pytest.mark.parametrize(
    ("query", "title"),
    [
        ("running", "Run the nightly job"),  # english stems: running -> run
        ("runs ", "Run the nightly job"),
        ("задачи", "Важная задача"),  # russian stems: задачи -> задач
        ("задача", "Список задач"),
    ],
)
def test_english_and_russian_words_match_their_other_forms(alice, client_for, query, title):
    for text in ("Run the nightly job", "Важная задача", "Список задач", "Something else"):
        make_task(owner=alice, title=text)

    assert title in titles(search(client_for(alice), query))
    assert "Something else" not in titles(search(client_for(alice), query))


def test_the_last_word_matches_as_a_prefix_while_typing(alice, client_for):
    make_task(owner=alice, title="Production deployment")
    make_task(owner=alice, title="Развертывание сервера")
    client = client_for(alice)

    assert titles(search(client, "deplo")) == ["Production deployment"]
    # Past the english stem ("deploy"): the unstemmed words still match.
    assert titles(search(client, "deploym")) == ["Production deployment"]
    assert titles(search(client, "production deploym")) == ["Production deployment"]
    assert titles(search(client, "разверт")) == ["Развертывание сервера"]
    # A finished word (trailing space) is not a prefix any more.
    assert titles(search(client, "deplo ")) == []
    # Only the last word is a prefix.
    assert titles(search(client, "deplo production")) == []


def test_a_quoted_phrase_keeps_its_words_in_order(alice, client_for):
    make_task(owner=alice, title="deploy server now")
    make_task(owner=alice, title="server deploy")
    make_task(owner=alice, title="deploy the web", description="server later")

    assert titles(search(client_for(alice), '"deploy server"')) == ["deploy server now"]
    assert titles(search(client_for(alice), '"server deploy"')) == ["server deploy"]


def test_a_minus_excludes_in_either_language(alice, client_for):
    make_task(owner=alice, title="deploy staging")
    make_task(owner=alice, title="deploy production")
    make_task(owner=alice, title="deploy задача")
    client = client_for(alice)

    assert sorted(titles(search(client, "deploy -staging "))) == [
        "deploy production",
        "deploy задача",
    ]
    # The excluded word in another form than the task's ("задачи" vs "задача").
    assert sorted(titles(search(client, "deploy -задачи"))) == [
        "deploy production",
        "deploy staging",
    ]
    assert titles(search(client, 'deploy -"deploy production"')) == [
        "deploy задача",
        "deploy staging",
    ]


def test_or_means_either(alice, client_for):
    make_task(owner=alice, title="alpha")
    make_task(owner=alice, title="omega")
    make_task(owner=alice, title="gamma")

    assert sorted(titles(search(client_for(alice), "alpha or omega "))) == ["alpha", "omega"]
    assert sorted(titles(search(client_for(alice), "alpha OR omega"))) == ["alpha", "omega"]
    assert titles(search(client_for(alice), "alpha omega ")) == []


def test_status_and_kind_filters(alice, client_for):
    make_task(owner=alice, title="report one", kind="echo", status=TaskStatus.COMPLETED)
    make_task(owner=alice, title="report two", kind="simulate", status=TaskStatus.COMPLETED)
    make_task(owner=alice, title="report three", kind="echo", status=TaskStatus.FAILED)
    client = client_for(alice)

    assert sorted(titles(search(client, "report", status="completed"))) == [
        "report one",
        "report two",
    ]
    assert sorted(titles(search(client, "report", kind="echo"))) == ["report one", "report three"]
    assert titles(search(client, "report", status="completed", kind="echo")) == ["report one"]
    assert search(client, "report", status="done").status_code == 400


def test_markup_in_a_task_can_never_reach_the_page(alice, client_for):
    make_task(
        owner=alice,
        title="<img src=x onerror=alert(1)> deploy",
        description='<script>alert("x")</script> & deploy "quoted"',
    )

    (hit,) = search(client_for(alice), "deploy").json()["results"]

    assert hit["title_snippet"] == "&lt;img src=x onerror=alert(1)&gt; <mark>deploy</mark>"
    assert hit["description_snippet"] == (
        "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; <mark>deploy</mark> "
        "&quot;quoted&quot;"
    )
    # The task itself is data, returned as written.
    assert hit["task"]["title"] == "<img src=x onerror=alert(1)> deploy"


def test_a_long_description_is_cut_around_its_first_match(alice, client_for):
    filler = " ".join(f"word{number}" for number in range(200))
    make_task(owner=alice, title="long", description=f"{filler} kubernetes {filler}")

    (hit,) = search(client_for(alice), "kubernetes").json()["results"]
    snippet = hit["description_snippet"]

    assert "<mark>kubernetes</mark>" in snippet
    assert snippet.startswith("…") and snippet.endswith("…")
    assert len(snippet) < 300


def test_pages_are_capped(alice, client_for):
    for number in range(60):
        make_task(owner=alice, title=f"batch job {number}")

    body = search(client_for(alice), "batch", page_size=500).json()
    second = client_for(alice).get(body["next"]).json()

    assert body["count"] == 60
    assert len(body["results"]) == 50
    assert len(second["results"]) == 10
    assert second["previous"] is not None


@pytest.mark.parametrize("query", ["", "   ", "\t"])
def test_an_empty_query_is_400_with_a_message(alice, client_for, query):
    response = search(client_for(alice), query)

    assert response.status_code == 400
    assert response.json()["query"]


def test_a_missing_query_is_400(alice, client_for):
    response = client_for(alice).get("/search")

    assert response.status_code == 400
    assert "query" in response.json()


def test_an_over_long_query_is_400_naming_the_limit(alice, client_for):
    with override_settings(TASKHUB_SEARCH_MAX_QUERY_CHARS=20):
        response = search(client_for(alice), "x" * 21)
        at_limit = search(client_for(alice), "x" * 20)

    assert response.status_code == 400
    assert "20" in response.json()["query"][0]
    assert at_limit.status_code == 200


NASTY = [
    "'",
    '"',
    '""',
    '"""',
    "&",
    "|",
    "!",
    "!!",
    "(",
    ")",
    "()",
    ":*",
    "a:*",
    "<->",
    "<1>",
    "a <-> b",
    "& | ! ( ) : * <->",
    "'&|!():*<->\"",
    "deploy & | ! : *",
    "-",
    "--",
    "- -",
    "-deploy",
    "---deploy",
    "or",
    "or or or",
    "deploy or",
    "or deploy",
    '-"',
    '"unclosed phrase',
    "deploy\\",
    "\\'",
    "%s",
    "%(x)s",
    "'; DROP TABLE tasks_task; --",
    "a'b",
    "\x02mark\x03",
    "💥 emoji",
    "a" * 200,
    "ab " * 66,
    "deploy:*",
    "deploy:A",
    "_",
    "__init__",
]


def test_operator_characters_never_cause_a_server_error(alice, client_for):
    make_task(owner=alice, title="deploy server", description="it's (a) test: x & y | z")
    client = client_for(alice)

    answers = {query: search(client, query) for query in NASTY}

    failed = {query: r.status_code for query, r in answers.items() if r.status_code != 200}
    assert failed == {}
    assert all(isinstance(r.json()["count"], int) for r in answers.values())
    # Still a search, not an error swallowed into "nothing found".
    assert answers["deploy & | ! : *"].json()["count"] == 1
    assert answers["-deploy"].json()["count"] == 0


def test_a_nul_character_is_a_400_not_a_500(alice, client_for):
    response = search(client_for(alice), "deploy\x00")

    assert response.status_code == 400
    assert "query" in response.json()


def test_a_query_of_only_stop_words_finds_nothing(alice, client_for):
    make_task(owner=alice, title="the task of the day")

    assert titles(search(client_for(alice), "the of ")) == []
