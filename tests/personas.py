"""Named people of the tests. `ada` is verified, `bob` signed up but never verified, `root` runs the site."""
from django.utils import timezone

from levee.accounts.models import User

PASSWORD = "correct horse battery staple"


def make_user(email: str, *, verified: bool = True, staff: bool = False) -> User:
    user = User.objects.create_user(email, PASSWORD, is_staff=staff, is_superuser=staff,
                                    email_verified_at=timezone.now() if verified else None)
    return user


def ada() -> User:
    return make_user("ada@example.com")


def bob() -> User:
    return make_user("bob@example.com", verified=False)


def root() -> User:
    return make_user("root@example.com", staff=True)
