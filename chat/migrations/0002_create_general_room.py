"""Every installation starts with one public room, `general`, that every user may join."""

from django.db import migrations

GENERAL_SLUG = "general"


def create_general_room(apps, schema_editor):
    ChatRoom = apps.get_model("chat", "ChatRoom")
    # get_or_create: re-running on a database that already has the room changes nothing.
    ChatRoom.objects.get_or_create(
        slug=GENERAL_SLUG, defaults={"name": "General", "is_public": True}
    )


def delete_general_room(apps, schema_editor):
    ChatRoom = apps.get_model("chat", "ChatRoom")
    ChatRoom.objects.filter(slug=GENERAL_SLUG).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(create_general_room, delete_general_room),
    ]
