"""Create the mitigation-state row and record the canonical address of every existing account."""
from django.apps.registry import Apps
from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor


def forwards(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    from levee.shield.emails import canonical_email

    apps.get_model("shield", "MitigationState").objects.get_or_create(pk=1)
    User = apps.get_model("accounts", "User")
    SignupIdentity = apps.get_model("shield", "SignupIdentity")
    batch = [SignupIdentity(user_id=pk, canonical_email=canonical_email(email))
             for pk, email in User.objects.order_by("pk").values_list("pk", "email").iterator()]
    SignupIdentity.objects.bulk_create(batch, ignore_conflicts=True, batch_size=1000)


class Migration(migrations.Migration):
    dependencies = [("shield", "0001_initial")]
    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
