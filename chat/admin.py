from __future__ import annotations

from django.contrib import admin

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
    list_display = ("slug", "name", "is_public", "created_by", "created_at")
    list_filter = ("is_public",)
    search_fields = ("slug", "name")
    raw_id_fields = ("created_by",)
    list_select_related = ("created_by",)
    inlines = (ChatParticipantInline,)


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    """Moderation view. Edits made here are stored but not broadcast to open sockets;
    clients see them in history (docs/chat.md)."""

    list_display = ("id", "room", "author", "short_text", "created_at", "edited_at")
    list_filter = ("room",)
    search_fields = ("text",)
    raw_id_fields = ("author",)
    list_select_related = ("room", "author")
    date_hierarchy = "created_at"
    ordering = ("-id",)

    @admin.display(description="text")
    def short_text(self, message: Message) -> str:
        return message.text if len(message.text) <= 80 else message.text[:79] + "…"
