from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView

from taskhub import health
from taskhub.auth_api import RegisterApi
from tasks.api import legacy

api_urlpatterns = [
    path("auth/register/", RegisterApi.as_view(), name="auth-register"),
    path("auth/token/", TokenObtainPairView.as_view(), name="auth-token"),
    path("auth/token/refresh/", TokenRefreshView.as_view(), name="auth-token-refresh"),
    path("", include("tasks.api.urls")),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
]

urlpatterns = [
    path("api/", include(api_urlpatterns)),
    # The original Go service's endpoints, kept byte for byte for its clients.
    path("task/create", legacy.legacy_task_create, name="legacy-task-create"),
    path("task/check-result", legacy.legacy_task_check_result, name="legacy-task-check-result"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("api-auth/", include("rest_framework.urls")),
    path("", include("django_prometheus.urls")),
]

handler400 = "taskhub.exceptions.json_bad_request"
handler404 = "taskhub.exceptions.json_not_found"
handler500 = "taskhub.exceptions.json_server_error"
