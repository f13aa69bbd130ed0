"""Sign-up: the REST endpoint and the page's form accept and refuse the same input with
the same words, because both go through taskhub.accounts.user_create."""

from __future__ import annotations

import html
import threading

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import connection
from rest_framework.test import APIClient

from taskhub import accounts

pytestmark = pytest.mark.django_db

REFUSED = [
    pytest.param("bad name!", "a-long-pass-phrase", "username", id="username-with-a-space"),
    pytest.param("ALICE", "a-long-pass-phrase", "username", id="alices-name-in-capitals"),
    pytest.param("erin", "short", "password", id="password-too-short"),
    pytest.param("erin", "password123", "password", id="password-too-common"),
    pytest.param("erin", "12345678901", "password", id="password-all-digits"),
]


def rest_sign_up(username: str, password: str):
    return APIClient().post(
        "/api/auth/register/", {"username": username, "password": password}, format="json"
    )


@pytest.mark.parametrize(("username", "password", "field"), REFUSED)
def test_rest_and_the_page_refuse_the_same_input_with_the_same_words(
    client, alice, username, password, field
):
    with pytest.raises(ValidationError) as refused:
        accounts.user_validate(username=username, password=password)
    expected = refused.value.message_dict[field]

    rest = rest_sign_up(username, password)
    page = client.post(
        "/accounts/signup/",
        {"username": username, "password1": password, "password2": password},
    )

    assert rest.status_code == 400
    assert rest.json()[field] == expected
    assert page.status_code == 200
    page_text = html.unescape(page.content.decode())
    assert all(message in page_text for message in expected), expected
    assert User.objects.count() == 1  # only alice


def test_a_new_user_signs_up_over_rest_and_can_log_in():
    response = rest_sign_up("erin", "erin-pass-9731")

    assert response.status_code == 201
    assert response.json() == {"id": User.objects.get(username="erin").pk, "username": "erin"}
    assert User.objects.get(username="erin").check_password("erin-pass-9731")


@pytest.mark.django_db(transaction=True)
def test_two_racing_sign_ups_for_one_name_make_one_user():
    results: list[int] = []
    start = threading.Barrier(2)

    def sign_up() -> None:
        start.wait()
        try:
            results.append(rest_sign_up("frank", "frank-pass-9731").status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=sign_up) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results) == [201, 400]
    assert User.objects.filter(username__iexact="frank").count() == 1
