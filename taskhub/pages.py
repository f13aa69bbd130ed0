"""The browser page (design.md: "the browser page"): the dashboard and sign-up.

Server-rendered shells only. The dashboard's data comes from the REST API and the /ws
event stream in the browser (taskhub/static/taskhub/dashboard.js), so nothing here reads
tasks; the view hands the script its configuration through `json_script`, never by
formatting values into JavaScript.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_http_methods

from tasks.processors import registry

CHAT_ROOM = "general"


@login_required
@ensure_csrf_cookie  # the page's fetch() calls send it back as X-CSRFToken
def dashboard(request: HttpRequest) -> HttpResponse:
    config = {
        "user": {"id": request.user.pk, "username": request.user.get_username()},
        "kinds": sorted(registry.available_kinds()),
        "defaultTimeout": settings.TASKHUB_DEFAULT_TIMEOUT,
        "maxTimeout": settings.TASKHUB_MAX_TIMEOUT,
        "chatRoom": CHAT_ROOM,
        "loginUrl": settings.LOGIN_URL,
    }
    return render(request, "dashboard.html", {"config": config, "chat_room": CHAT_ROOM})


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    """Django's UserCreationForm; a new user is signed in and lands on the dashboard."""
    if request.user.is_authenticated:
        return redirect("dashboard")
    form = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("dashboard")
    return render(request, "registration/signup.html", {"form": form})
