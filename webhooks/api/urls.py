from django.urls import path

from webhooks.api import views

urlpatterns = [
    path("webhooks/settings/", views.WebhookSettingsApi.as_view(), name="webhook-settings"),
    path(
        "webhooks/settings/rotate-secret/",
        views.WebhookSecretRotateApi.as_view(),
        name="webhook-secret-rotate",
    ),
    path(
        "tasks/<uuid:task_id>/webhooks/",
        views.TaskWebhookListApi.as_view(),
        name="task-webhooks",
    ),
    path(
        "tasks/<uuid:task_id>/webhooks/<uuid:delivery_id>/redeliver/",
        views.TaskWebhookRedeliverApi.as_view(),
        name="task-webhook-redeliver",
    ),
]
