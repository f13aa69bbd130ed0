"""The minimal-Django reference for REST create: one view that inserts one row, served
by Daphne with TaskHub's settings (bench/ref_settings.py), so the middleware, the database
and the server are the project's and the difference is TaskHub's own work (DRF, JWT,
throttling, validation, the task's event and the dispatcher nudge).

    DJANGO_SETTINGS_MODULE=bench.ref_settings daphne bench.ref_django:application

The row is a tasks_task row, as the project's create inserts (the same table, indexes
and generated search column), but `cancelled` so the dispatcher never picks it up.

The same server also routes the lean HTTP path prototype (bench/proto_http.py) under
/proto/: measured on this process, beside the reference's view, in the `rest` and
`search` parts.
"""

from __future__ import annotations

import json
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.ref_settings")
application = get_asgi_application()

from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402

from bench import proto_http  # noqa: E402
from tasks.models import Task, TaskStatus  # noqa: E402


@csrf_exempt
def create(request: HttpRequest) -> JsonResponse:
    payload = json.loads(request.body or b"{}")
    task = Task.objects.create(
        title=str(payload.get("title", "ref"))[:200],
        kind="echo",
        timeout=60,
        status=TaskStatus.CANCELLED,
    )
    return JsonResponse({"id": str(task.pk)}, status=201)


urlpatterns = [
    path("ref/create", create),
    path("proto/tasks/", proto_http.create),
    path("proto/search", proto_http.search),
]
