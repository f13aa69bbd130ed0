from django.urls import path

from notifications.api import views

urlpatterns = [
    path("notifications/", views.NotificationListApi.as_view(), name="notification-list"),
    path(
        "notifications/read-all/",
        views.NotificationReadAllApi.as_view(),
        name="notification-read-all",
    ),
    path(
        "notifications/<int:notification_id>/read/",
        views.NotificationReadApi.as_view(),
        name="notification-read",
    ),
    path("events/", views.EventListApi.as_view(), name="event-list"),
    path("tasks/<uuid:task_id>/events/", views.TaskEventListApi.as_view(), name="task-events"),
]
