"""A GIN index for the chat's full-text search (services.search), on PostgreSQL only: SQLite has
none and searches by substring."""
from typing import Any

from django.db import migrations

INDEX = "chat_message_content_fts"


def create(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {INDEX} ON chat_message "
                              "USING gin (to_tsvector('simple', content))")


def drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    dependencies = [("chat", "0002_message_reasoning")]
    operations = [migrations.RunPython(create, drop)]
