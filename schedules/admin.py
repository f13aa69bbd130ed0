"""Schedules for operators: list, filters, the next five run times, writes through
schedules.services (taskhub/tests/test_architecture.py)."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html_join

from schedules import selectors, services
from schedules.models import Schedule, ScheduleOccurrence


def _runs_text(runs) -> str:
    return ", ".join(moment.isoformat() for moment in runs) or "none (disabled)"


class ScheduleAdminForm(forms.ModelForm):
    preview = forms.BooleanField(
        required=False,
        label="Preview only",
        help_text="Show the next five run times of these values instead of saving.",
    )

    class Meta:
        model = Schedule
        fields = (
            "owner",
            "cron",
            "every_seconds",
            "timezone",
            "enabled",
            "kind",
            "title",
            "description",
            "params",
            "timeout",
        )

    def clean(self) -> dict:
        data = super().clean()
        editable = [f for f in services.EDITABLE_FIELDS if f in self.fields]
        # A value its form field already refused is not in `data`: the instance's stands
        # in for it, so the service sees whole values and its message is not doubled.
        values = {f: data.get(f, getattr(self.instance, f)) for f in editable}
        values["cron"] = values.get("cron") or ""
        try:
            values = services.schedule_validate(**(services.DEFAULTS | values))
        except ValidationError as exc:
            for field, field_messages in exc.message_dict.items():
                if field in data:
                    self.add_error(field, field_messages)
                elif field not in self.errors:
                    self.add_error(None, f"{field}: {' '.join(field_messages)}")
            return data
        self.next_runs = selectors.schedule_preview_runs(
            cron=values["cron"],
            every_seconds=values["every_seconds"],
            timezone_name=values["timezone"],
        )
        if data.get("preview"):
            # Shown above the form, which keeps its values; untick to save.
            raise ValidationError(
                "Next five run times if saved now: %(runs)s. Untick “Preview only” to save.",
                params={"runs": _runs_text(self.next_runs)},
            )
        return data


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    form = ScheduleAdminForm
    list_display = (
        "title",
        "owner",
        "kind",
        "cron",
        "every_seconds",
        "timezone",
        "enabled",
        "next_run_at",
        "last_run_at",
    )
    list_filter = ("enabled", "kind", "timezone")
    search_fields = ("title", "description", "cron", "owner__username")
    list_select_related = ("owner",)
    readonly_fields = ("next_five_runs", "next_run_at", "last_run_at", "created_at", "updated_at")

    def get_readonly_fields(self, request: HttpRequest, obj: Schedule | None = None) -> tuple:
        # Whose schedule it is never changes.
        return (("owner",) if obj else ()) + self.readonly_fields

    @admin.display(description="Next five run times")
    def next_five_runs(self, obj: Schedule) -> str:
        if obj.pk is None:
            return "Tick “Preview only” and save to see them before saving."
        runs = selectors.schedule_next_runs(obj)
        if not runs:
            return "none (disabled)"
        return format_html_join("", "<div>{}</div>", ((moment.isoformat(),) for moment in runs))

    def save_model(self, request: HttpRequest, obj: Schedule, form, change: bool) -> None:
        values = {
            f: form.cleaned_data[f] for f in services.EDITABLE_FIELDS if f in form.cleaned_data
        }
        values["cron"] = values.get("cron") or ""
        if change:
            saved = services.schedule_update(schedule=obj, **values)
        else:
            saved = services.schedule_create(owner=form.cleaned_data["owner"], **values)
        obj.pk = saved.pk
        obj.refresh_from_db()
        self.message_user(
            request,
            f"Next five run times: {_runs_text(selectors.schedule_next_runs(obj))}.",
            messages.INFO,
        )

    def delete_model(self, request: HttpRequest, obj: Schedule) -> None:
        services.schedule_delete(schedule=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        for schedule in queryset:
            services.schedule_delete(schedule=schedule)


@admin.register(ScheduleOccurrence)
class ScheduleOccurrenceAdmin(admin.ModelAdmin):
    """What each schedule created and when (read-only: the dispatcher writes these)."""

    list_display = ("schedule", "due_at", "task", "error", "created_at")
    list_filter = ("due_at",)
    search_fields = ("schedule__title", "schedule__owner__username")
    list_select_related = ("schedule", "task")
    raw_id_fields = ("schedule", "task")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False
