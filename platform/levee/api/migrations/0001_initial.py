import django.core.validators
from django.apps.registry import Apps
from django.db import migrations, models
from django.db.backends.base.schema import BaseDatabaseSchemaEditor


def seed_models(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    LlmModel = apps.get_model("api", "LlmModel")
    LlmModel.objects.get_or_create(name="deepseek-chat", defaults={"context_length": 2048, "max_output": 1024,
                                                                   "default_max_tokens": 256})
    # Same demo checkpoint; a real deployment points it at a reasoning checkpoint and enables it.
    LlmModel.objects.get_or_create(name="deepseek-reasoner", defaults={"context_length": 2048, "max_output": 1024,
                                                                       "default_max_tokens": 256,
                                                                       "reasoner": True, "enabled": False})


class Migration(migrations.Migration):
    initial = True
    dependencies = []

    operations = [
        migrations.CreateModel(
            name="LlmModel",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(help_text="the `model` field clients send", max_length=64, unique=True)),
                ("queue", models.CharField(blank=True, help_text="Celery queue; empty means inference.<name>", max_length=128)),
                ("tokenizer_dir", models.CharField(default="inference/demo/checkpoint", help_text="directory with tokenizer.json and tokenizer_config.json; relative paths start at the project root", max_length=512)),
                ("context_length", models.PositiveIntegerField(default=4096, validators=[django.core.validators.MinValueValidator(16)])),
                ("max_output", models.PositiveIntegerField(default=2048, help_text="largest max_tokens a request may ask for", validators=[django.core.validators.MinValueValidator(1)])),
                ("default_max_tokens", models.PositiveIntegerField(default=1024, validators=[django.core.validators.MinValueValidator(1)])),
                ("max_queue_depth", models.PositiveIntegerField(default=256, help_text="queued jobs above this → 503")),
                ("reasoner", models.BooleanField(default=False, help_text="split <think>…</think> into reasoning_content")),
                ("enabled", models.BooleanField(default=True)),
                ("owned_by", models.CharField(default="levee", max_length=64)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
            options={"ordering": ["name"], "verbose_name": "model"},
        ),
        migrations.RunPython(seed_models, migrations.RunPython.noop),
    ]
