"""The browser page (docs/browser.md): the dashboard and sign-up.

Server-rendered shells only. The dashboard's data comes from the REST API and the /ws
event stream in the browser (taskhub/static/taskhub/dashboard.js), so nothing here reads
tasks; the view hands the script its configuration through `json_script`, never by
formatting values into JavaScript.
"""

from __future__ import annotations

from uuid import UUID

from django import forms
from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_http_methods

from notifications import protocol
from taskhub import accounts
from tasks import selectors as task_selectors
from tasks.models import ALLOWED_SOURCES, TERMINAL_STATUSES, TaskStatus
from tasks.processors import registry

CHAT_ROOM = "general"


def _page_config(request: HttpRequest) -> dict:
    """What every signed-in page's script needs: who, the kinds with their form help and
    default params, the limits and the state machine's sets."""
    return {
        "user": {"id": request.user.pk, "username": request.user.get_username()},
        "kinds": sorted(registry.available_kinds()),
        "kindForms": registry.kind_forms(),
        "defaultTimeout": settings.TASKHUB_TASK_DEFAULT_TIMEOUT,
        "maxTimeout": settings.TASKHUB_TASK_MAX_TIMEOUT,
        "chatRoom": CHAT_ROOM,
        "loginUrl": settings.LOGIN_URL,
        # The state machine's sets, so dashboard.js keeps no copy that could drift:
        # which statuses are final, and which ones the Cancel and Retry buttons apply to.
        "statuses": {
            "all": list(TaskStatus.values),  # in the state machine's order, for filters
            "terminal": sorted(protocol.TASK_TERMINAL_STATUSES),
            "cancellable": sorted(ALLOWED_SOURCES[TaskStatus.CANCELLED]),
            # A retry by hand starts from a final status only (pending is also reached
            # from in_progress, by an automatic retry: no button for that).
            "retryable": sorted(ALLOWED_SOURCES[TaskStatus.PENDING] & TERMINAL_STATUSES),
        },
    }


@login_required
@ensure_csrf_cookie  # the page's fetch() calls send it back as X-CSRFToken
def dashboard(request: HttpRequest) -> HttpResponse:
    config = _page_config(request)
    return render(request, "dashboard.html", {"config": config, "chat_room": CHAT_ROOM})


@login_required
@ensure_csrf_cookie
def task_page(request: HttpRequest, task_id: UUID) -> HttpResponse:
    """A task's own page (docs/browser.md): its owner only; anybody else gets the 404 an
    unknown id gets. The script reads the task and its events over REST once the socket
    is live, as the dashboard does, so this view only checks access and names the task."""
    task = task_selectors.task_get_for(user=request.user, task_id=task_id)
    config = {**_page_config(request), "taskId": str(task.pk)}
    return render(request, "task_detail.html", {"config": config, "task": task})


class SignupForm(forms.Form):
    """Shapes the page's input (the password typed twice); accounts.user_create decides
    what is acceptable, as it does for the REST sign-up."""

    username = forms.CharField(label="Username", max_length=150, strip=False)
    password1 = forms.CharField(label="Password", strip=False, widget=forms.PasswordInput)
    password2 = forms.CharField(
        label="Password confirmation", strip=False, widget=forms.PasswordInput
    )

    # Where each of user_create's error keys shows on this form.
    FIELD_OF_ERROR = {"username": "username", "password": "password2"}

    def clean(self) -> dict:
        data = super().clean()
        if data.get("password1") and data.get("password1") != data.get("password2"):
            self.add_error("password2", "The two password fields didn't match.")
        if "username" in data and "password1" in data:
            try:
                accounts.user_validate(username=data["username"], password=data["password1"])
            except ValidationError as exc:
                self.add_account_errors(exc)
        return data

    def add_account_errors(self, exc: ValidationError) -> None:
        for key, messages in exc.message_dict.items():
            self.add_error(self.FIELD_OF_ERROR.get(key), messages)


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    """A new user is signed in and lands on the dashboard."""
    if request.user.is_authenticated:
        return redirect("dashboard")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            user = accounts.user_create(
                username=form.cleaned_data["username"], password=form.cleaned_data["password1"]
            )
        except ValidationError as exc:  # a racing sign-up took the name meanwhile
            form.add_account_errors(exc)
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            return redirect("dashboard")
    return render(request, "registration/signup.html", {"form": form})
