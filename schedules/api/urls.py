from django.urls import path

from schedules.api import views

urlpatterns = [
    path("", views.ScheduleListCreateApi.as_view(), name="schedule-list"),
    path("preview/", views.SchedulePreviewApi.as_view(), name="schedule-preview"),
    path("<int:schedule_id>/", views.ScheduleDetailApi.as_view(), name="schedule-detail"),
]
