from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView

from search.views import SearchApi
from taskhub import health, metrics, ops, pages
from taskhub.auth_api import RegisterApi
from tasks.api import legacy

api_urlpatterns = [
    path("auth/register/", RegisterApi.as_view(), name="auth-register"),
    path("auth/token/", TokenObtainPairView.as_view(), name="auth-token"),
    path("auth/token/refresh/", TokenRefreshView.as_view(), name="auth-token-refresh"),
    path("", include("tasks.api.urls")),
    path("", include("notifications.api.urls")),
    path("", include("webhooks.api.urls")),
    path("chat/", include("chat.api.urls")),
    path("schedules/", include("schedules.api.urls")),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    # Swagger UI and ReDoc from our own static files (drf_spectacular_sidecar), no CDN.
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path(
        "redoc/",
        SpectacularRedocView.as_view(url_name="schema", template_name="api/redoc.html"),
        name="api-redoc",
    ),
]

urlpatterns = [
    path("api/", include(api_urlpatterns)),
    # The original Go service's endpoints, kept byte for byte for its clients.
    path("task/create", legacy.legacy_task_create, name="legacy-task-create"),
    path("task/check-result", legacy.legacy_task_check_result, name="legacy-task-check-result"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    # The operators' view (staff only, taskhub/ops.py), before the admin's own URLs.
    path("admin/operations/", include(ops.urlpatterns)),
    path("admin/", admin.site.urls),
    path("api-auth/", include("rest_framework.urls")),
    path("search", SearchApi.as_view(), name="search"),
    # Our view, not django_prometheus.urls: it adds TaskHub's gauges, sums every process's
    # counters (multiprocess mode) and enforces METRICS_TOKEN / METRICS_ALLOWED_NETWORKS.
    path("metrics", metrics.metrics_view, name="metrics"),
    # The browser page (docs/browser.md): session login, sign-up and the live dashboard.
    path("accounts/signup/", pages.signup, name="signup"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("tasks/<uuid:task_id>/", pages.task_page, name="task-page"),
    path("", pages.dashboard, name="dashboard"),
]

handler400 = "taskhub.exceptions.json_bad_request"
handler404 = "taskhub.exceptions.json_not_found"
handler500 = "taskhub.exceptions.json_server_error"
