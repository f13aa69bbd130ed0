from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect

from taskhub.exceptions import ConflictError
from tasks import services
from tasks.models import Task, TaskStatus

# Set on the request when the service refused the change form's edit (save_model).
EDIT_REFUSED = "_taskhub_task_edit_refused"


class TaskAdminForm(forms.ModelForm):
    class Meta:
        model = Task
        fields = ("owner", "title", "description", "kind", "params", "timeout", "run_at")

    def clean(self) -> dict:
        data = super().clean()
        run_fields = {"kind", "params", "timeout"}
        if run_fields <= set(data) and run_fields & set(self.changed_data):
            try:
                services.task_validate_run(
                    kind=data["kind"], params=data["params"], timeout=data["timeout"]
                )
            except ValidationError as exc:
                for field, field_messages in exc.message_dict.items():
                    self.add_error(field, field_messages)
        return data


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    form = TaskAdminForm
    list_display = (
        "title",
        "status",
        "kind",
        "owner",
        "progress",
        "attempts",
        "created_at",
        "started_at",
        "finished_at",
    )
    list_filter = ("status", "kind", "created_at")
    search_fields = ("id", "title", "description", "owner__username")
    list_select_related = ("owner",)
    date_hierarchy = "created_at"
    readonly_fields = (
        "id",
        "status",
        "progress",
        "result",
        "error",
        "attempts",
        "stop_requested",
        "worker",
        "created_at",
        "updated_at",
        "queued_at",
        "started_at",
        "finished_at",
    )
    fields = (
        "id",
        "owner",
        "title",
        "description",
        "kind",
        "params",
        "timeout",
        "run_at",
        *readonly_fields[1:],
    )
    actions = ("retry_tasks", "cancel_tasks")

    def get_readonly_fields(self, request: HttpRequest, obj: Task | None = None) -> tuple:
        if obj is None:
            return self.readonly_fields
        # Who owns a task never changes; how it runs, only while nothing has run it yet
        # (services.task_update_details enforces the same).
        locked = ("owner",)
        if obj.status != TaskStatus.PENDING:
            locked += tuple(sorted(services.RUN_FIELDS))
        return (*locked, *self.readonly_fields)

    def save_model(self, request: HttpRequest, obj: Task, form, change: bool) -> None:
        if change:
            # Through the service, so an edit is as visible as any other change: a
            # task.updated event, fresh cached reads.
            editable = (services.DESCRIPTIVE_FIELDS | services.RUN_FIELDS) & set(form.changed_data)
            try:
                services.task_update_details(
                    task_id=obj.pk, **{field: form.cleaned_data[field] for field in editable}
                )
            except ConflictError as exc:  # the task left pending while the form was open
                # Nothing was saved: say why, and tell log_change and response_change, which
                # the admin calls next, that there is no change to log or to call a success.
                setattr(request, EDIT_REFUSED, True)
                self.message_user(request, str(exc), messages.ERROR)
            obj.refresh_from_db()
            return
        created = services.task_create(
            owner=obj.owner,
            title=obj.title,
            description=obj.description,
            kind=obj.kind,
            params=obj.params,
            timeout=obj.timeout,
            run_at=obj.run_at,
        )
        obj.pk = created.pk
        obj.refresh_from_db()

    def log_change(self, request: HttpRequest, obj: Task, message):
        if getattr(request, EDIT_REFUSED, False):
            return None  # the history would list fields that did not change
        return super().log_change(request, obj, message)

    def response_change(self, request: HttpRequest, obj: Task) -> HttpResponse:
        if getattr(request, EDIT_REFUSED, False):
            # Back to the form, now showing the task as it is, with the error above it;
            # not the list with "was changed successfully".
            return HttpResponseRedirect(request.get_full_path())
        return super().response_change(request, obj)

    def get_changeform_initial_data(self, request: HttpRequest) -> dict:
        from django.conf import settings

        return {"timeout": settings.TASKHUB_TASK_DEFAULT_TIMEOUT, "kind": "simulate"}

    @admin.action(description="Retry selected failed/cancelled tasks")
    def retry_tasks(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        self._apply(request, queryset, services.task_retry, "retried")

    @admin.action(description="Cancel selected unfinished tasks")
    def cancel_tasks(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        self._apply(request, queryset, services.task_cancel, "cancelled")

    def _apply(self, request: HttpRequest, queryset: QuerySet[Task], action, verb: str) -> None:
        done, refused = 0, []
        for task in queryset:
            try:
                action(task=task)
                done += 1
            except ConflictError as exc:
                refused.append(f"{task.title}: {exc}")
        if done:
            self.message_user(request, f"{done} task(s) {verb}.", messages.SUCCESS)
        for message in refused:
            self.message_user(request, message, messages.WARNING)
