from django.urls import path

from tasks.api import views

urlpatterns = [
    path("tasks/", views.TaskListCreateApi.as_view(), name="task-list"),
    path("tasks/<uuid:task_id>/", views.TaskDetailApi.as_view(), name="task-detail"),
    path("tasks/<uuid:task_id>/cancel/", views.TaskCancelApi.as_view(), name="task-cancel"),
    path("tasks/<uuid:task_id>/retry/", views.TaskRetryApi.as_view(), name="task-retry"),
]
