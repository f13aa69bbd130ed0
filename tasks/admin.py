from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected as django_delete_selected
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.translation import gettext_lazy

from taskhub.exceptions import ConflictError
from tasks import services
from tasks.models import IdempotencyKey, Task, TaskStatus
from tasks.processors import registry

# Set on the request when the service refused the change form's edit (save_model).
EDIT_REFUSED = "_taskhub_task_edit_refused"
# Set on the request when the service refused the delete view's delete (delete_model).
DELETE_REFUSED = "_taskhub_task_delete_refused"


class KindField(forms.ChoiceField):
    """A choice of the registered kinds (tasks/processors/registry.py), not free text. A
    value outside them (a crafted POST, a kind removed meanwhile) is refused by the
    service's validation in TaskAdminForm.clean, in the words every surface uses."""

    def valid_value(self, value: str) -> bool:
        return True


class TaskAdminForm(forms.ModelForm):
    kind = KindField()

    class Meta:
        model = Task
        fields = ("owner", "title", "description", "kind", "params", "timeout", "run_at")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if "kind" in self.fields:
            kinds = set(registry.available_kinds())
            # A pending task of a kind no longer configured still shows what it is; the
            # service refuses it unless changed to a registered one.
            if self.instance.pk and self.instance.kind:
                kinds.add(self.instance.kind)
            self.fields["kind"].choices = [(kind, kind) for kind in sorted(kinds)]

    def clean(self) -> dict:
        data = super().clean()
        run_fields = ("kind", "params", "timeout")
        if not set(run_fields) <= set(self.fields):
            return data  # read-only: the task has left pending
        if self.instance.pk and not set(run_fields) & set(self.changed_data):
            return data
        # The service's own validation, each message on its field. A value its form field
        # already refused is not in `data`: the instance's stands in for it and its message
        # is not doubled, so the service sees whole values and save_model never raises.
        values = {field: data.get(field, getattr(self.instance, field)) for field in run_fields}
        try:
            services.task_validate_run(
                kind=values["kind"], params=values["params"], timeout=values["timeout"] or 0
            )
        except ValidationError as exc:
            for field, field_messages in exc.message_dict.items():
                if field in data:
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
        "max_attempts",
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
        # The retry policy, resolved at create (docs/tasks.md, "Retries"): shown, not edited.
        "max_attempts",
        "retry_backoff",
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
    actions = ("delete_selected", "retry_tasks", "cancel_tasks")

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

    def has_delete_permission(self, request: HttpRequest, obj: Task | None = None) -> bool:
        # A running task is not deleted (services.task_delete says why): no Delete button
        # on its page, and a selection holding one is refused before anything is deleted.
        if obj is not None and obj.status == TaskStatus.IN_PROGRESS:
            return False
        return super().has_delete_permission(request, obj)

    def log_deletions(self, request: HttpRequest, queryset) -> None:
        # Django calls this before delete_model/delete_queryset, so a delete the service
        # then refuses would stay in the history as "Deleted". _log_deleted records the
        # tasks the service did delete, once it has.
        return None

    def _log_deleted(self, request: HttpRequest, tasks: list[Task]) -> None:
        if tasks:
            # The instances keep their pk: the service deleted the rows by id.
            super().log_deletions(request, tasks)

    def delete_model(self, request: HttpRequest, obj: Task) -> None:
        # Through the service, so the owner's page drops the row and cached reads die.
        try:
            deleted = services.task_delete(task_id=obj.pk)
        except ConflictError as exc:  # it started running after the confirmation page
            setattr(request, DELETE_REFUSED, True)
            self.message_user(request, str(exc), messages.ERROR)
            return
        if deleted:  # not when another operator's delete got there first
            self._log_deleted(request, [obj])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        """Each task through the service; says how many it deleted and which it refused."""
        deleted, refused = [], []
        for task in queryset:
            try:
                if services.task_delete(task_id=task.pk):
                    deleted.append(task)
            except ConflictError:
                task.refresh_from_db()
                refused.append(task)
        self._log_deleted(request, deleted)
        if deleted:
            self.message_user(request, f"{len(deleted)} task(s) deleted.", messages.SUCCESS)
        self._summarize_refused(
            request, refused, "not deleted: a running task is deleted once it has stopped"
        )

    @admin.action(
        permissions=["delete"], description=gettext_lazy("Delete selected %(verbose_name_plural)s")
    )
    def delete_selected(self, request: HttpRequest, queryset: QuerySet[Task]):
        """Django's action, less its "Successfully deleted N" after the delete, which would
        count the tasks the service refused too (delete_queryset says what happened).
        Named like Django's, so it takes its place (ModelAdmin.get_actions)."""
        if request.POST.get("post"):
            _, _, perms_needed, protected = self.get_deleted_objects(queryset, request)
            if not protected:
                # Django's check on a confirmed delete: a selection holding a task the
                # operator may not delete (a running one, has_delete_permission) is refused.
                if perms_needed:
                    raise PermissionDenied
                if queryset:
                    self.delete_queryset(request, queryset)
                return None  # the change list again
        # The confirmation page (or Django's "cannot delete" page).
        return django_delete_selected(self, request, queryset)

    def response_delete(self, request: HttpRequest, obj_display: str, obj_id) -> HttpResponse:
        if getattr(request, DELETE_REFUSED, False):
            # Back to the task, which is still there, with the error above it.
            return HttpResponseRedirect(reverse("admin:tasks_task_change", args=[obj_id]))
        return super().response_delete(request, obj_display, obj_id)

    def get_changeform_initial_data(self, request: HttpRequest) -> dict:
        from django.conf import settings

        return {"timeout": settings.TASKHUB_TASK_DEFAULT_TIMEOUT, "kind": "simulate"}

    @admin.action(description="Retry selected failed/cancelled tasks")
    def retry_tasks(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        done, refused = self._apply(queryset, services.task_retry)
        if done:
            self.message_user(request, f"{len(done)} task(s) retried.", messages.SUCCESS)
        self._summarize_refused(
            request, refused, "not retried: only a failed or cancelled task can be retried"
        )

    @admin.action(description="Cancel selected unfinished tasks")
    def cancel_tasks(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        done, refused = self._apply(queryset, services.task_cancel)
        # A task not started yet is cancelled now; a running one only asked to stop, and
        # its row shows "In progress" until its processor reaches a checkpoint.
        cancelled = sum(task.status == TaskStatus.CANCELLED for task in done)
        requested = len(done) - cancelled
        if cancelled:
            self.message_user(request, f"{cancelled} task(s) cancelled.", messages.SUCCESS)
        if requested:
            self.message_user(
                request,
                f"{requested} running task(s): cancel requested; it stops at its next "
                "checkpoint (reload this page to see it cancelled).",
                messages.SUCCESS,
            )
        self._summarize_refused(
            request, refused, "not cancelled: only an unfinished task can be cancelled"
        )

    def _apply(self, queryset: QuerySet[Task], action) -> tuple[list[Task], list[Task]]:
        """(tasks the service acted on, as it left them; tasks it refused, as they are)."""
        done, refused = [], []
        for task in queryset:
            try:
                done.append(action(task=task))
            except ConflictError:
                task.refresh_from_db()
                refused.append(task)
        return done, refused

    # A selection of hundreds should not make a message of hundreds of titles.
    REFUSED_TITLES_SHOWN = 10

    def _summarize_refused(self, request: HttpRequest, refused: list[Task], why: str) -> None:
        """One warning line for every task the action left alone, however many."""
        if not refused:
            return
        shown = ", ".join(
            f"{task.title} (already {task.status})"
            if task.is_terminal
            else f"{task.title} ({task.status})"
            for task in refused[: self.REFUSED_TITLES_SHOWN]
        )
        more = len(refused) - self.REFUSED_TITLES_SHOWN
        if more > 0:
            shown += f" and {more} more"
        self.message_user(request, f"{len(refused)} task(s) {why}: {shown}.", messages.WARNING)


@admin.register(IdempotencyKey)
class IdempotencyKeyAdmin(admin.ModelAdmin):
    """Read-only: a key is written by services.task_create_idempotent only and deleted by
    age (services.idempotency_keys_prune); a hand-edited hash or task would answer a
    client's retry with the wrong task (docs/api.md, "Idempotent creates")."""

    list_display = ("key", "owner", "task", "response_status", "created_at")
    search_fields = ("key", "owner__username")
    list_select_related = ("owner", "task")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(
        self, request: HttpRequest, obj: IdempotencyKey | None = None
    ) -> bool:
        return False

    def has_delete_permission(
        self, request: HttpRequest, obj: IdempotencyKey | None = None
    ) -> bool:
        return False
