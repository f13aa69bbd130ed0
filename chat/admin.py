"""Chat moderation. Every write goes through chat.services, so what users see of it is
broadcast like their own actions (docs/chat.md, "Admin")."""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from chat import services
from chat.models import ChatParticipant, ChatRoom, Message


class ChatParticipantInline(admin.TabularInline):
    model = ChatParticipant
    extra = 0
    # raw ids: a select of every user (or every message) would not scale.
    raw_id_fields = ("user",)
    readonly_fields = ("joined_at", "last_read_message_id")
    exclude = ("last_read_message",)


@admin.register(ChatRoom)
class ChatRoomAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "kind", "is_public", "created_by", "created_at")
    list_filter = ("kind", "is_public")
    search_fields = ("slug", "name")
    raw_id_fields = ("created_by",)
    list_select_related = ("created_by",)
    inlines = (ChatParticipantInline,)

    def get_readonly_fields(self, request: HttpRequest, obj: ChatRoom | None = None) -> tuple:
        # The slug is the room's name on the wire (services.chat_room_update keeps it). A
        # room's kind and a direct room's pair key are the DM service's (chat_direct_open),
        # never an operator's: the admin adds and edits ordinary rooms.
        made_by_services = ("kind", "direct_key", "created_at")
        return ("slug", "created_by", *made_by_services) if obj is not None else made_by_services

    def save_model(self, request: HttpRequest, obj: ChatRoom, form, change: bool) -> None:
        if change:
            room = services.chat_room_update(room_id=obj.pk, name=obj.name, is_public=obj.is_public)
        else:
            # Its creator (the operator unless another user is named) becomes its owner.
            room = services.chat_room_create(
                creator=obj.created_by or request.user,
                name=obj.name,
                slug=obj.slug,
                is_public=obj.is_public,
            )
        obj.pk = room.pk
        obj.refresh_from_db()

    def save_formset(self, request: HttpRequest, form, formset, change: bool) -> None:
        # The participants inline, row by row through the services (formset.save() would
        # write the rows itself). The lists formset.save() fills, the admin's history
        # message reads.
        room = form.instance
        formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
        for row in formset.forms:
            deleting = formset.can_delete and row.cleaned_data.get("DELETE", False)
            if not (row.has_changed() or deleting):
                continue
            before = row.initial.get("user")  # the user the row was about, if it existed
            if deleting:
                if before is not None:
                    services.chat_room_member_remove(room=room, user_id=before)
                    formset.deleted_objects.append(row.instance)
                continue
            user_id = row.cleaned_data["user"].pk
            if before is not None and before != user_id:
                services.chat_room_member_remove(room=room, user_id=before)
            participant = services.chat_room_member_set(
                room=room, user_id=user_id, role=row.cleaned_data["role"]
            )
            if before is None:
                formset.new_objects.append(participant)
            else:
                formset.changed_objects.append((participant, row.changed_data))

    def delete_model(self, request: HttpRequest, obj: ChatRoom) -> None:
        services.chat_room_delete(room_id=obj.pk)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ChatRoom]) -> None:
        for room_id in queryset.values_list("pk", flat=True):
            services.chat_room_delete(room_id=room_id)


class MessageAdminForm(forms.ModelForm):
    class Meta:
        model = Message
        fields = ("text",)

    def clean_text(self) -> str:
        # The rules of a user's post or edit, in their words, on the field.
        try:
            return services.chat_text_validate(self.cleaned_data["text"])
        except ValidationError as exc:
            raise ValidationError(exc.message_dict["text"]) from None


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    """Moderation view: an operator rewrites or deletes a message, and the room's open
    sockets get `chat.message.edited` / `chat.message.deleted` as for a user's action.
    No add: a message is someone's words, not the operator's."""

    form = MessageAdminForm
    list_display = ("id", "room", "author", "short_text", "created_at", "edited_at")
    list_filter = ("room",)
    search_fields = ("text",)
    list_select_related = ("room", "author")
    readonly_fields = ("room", "author", "created_at", "edited_at")
    fields = ("room", "author", "text", "created_at", "edited_at")
    date_hierarchy = "created_at"
    ordering = ("-id",)

    @admin.display(description="text")
    def short_text(self, message: Message) -> str:
        return message.text if len(message.text) <= 80 else message.text[:79] + "…"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Message, form, change: bool) -> None:
        if "text" in form.changed_data:
            services.chat_message_moderate(message_id=obj.pk, text=form.cleaned_data["text"])
        obj.refresh_from_db()

    def delete_model(self, request: HttpRequest, obj: Message) -> None:
        services.chat_message_delete(message_id=obj.pk)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        for message_id in queryset.values_list("pk", flat=True):
            services.chat_message_delete(message_id=message_id)
