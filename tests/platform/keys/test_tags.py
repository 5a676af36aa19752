"""Key tags (levee.keys.tags) and when the shield may refuse an untagged string outright
(levee.shield.keyfilter.refuses_untagged, ADR 0015)."""
from __future__ import annotations

import pytest

from levee.keys import tags
from levee.keys.services import KEY_PATTERN, create_api_key, revoke_api_key
from levee.shield import keyfilter, state
from tests.personas import ada


def test_a_minted_key_has_the_published_shape_and_its_tag_verifies():
    raw, fp = tags.mint(48)
    assert KEY_PATTERN.match(raw) and fp == tags.current_fingerprint()
    assert tags.fingerprint_of(raw) == fp and tags.fingerprint_of(raw.encode()) == fp


@pytest.mark.parametrize("where", [3, 20, -8, -1])
def test_changing_one_character_breaks_the_tag(where):
    raw, _ = tags.mint(48)
    swapped = "a" if raw[where] != "a" else "b"
    forged = raw[:where] + swapped + raw[where + 1:] if where != -1 else raw[:-1] + swapped
    assert tags.fingerprint_of(forged) is None


def test_a_made_up_key_does_not_verify():
    assert tags.fingerprint_of("sk-" + "a" * 48) is None
    assert tags.fingerprint_of("sk-") is None and tags.fingerprint_of("") is None


def test_keys_tagged_under_a_fallback_secret_still_verify(settings):
    settings.SECRET_KEY = "old-secret-" + "x" * 40
    raw, old_fp = tags.mint(48)
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = "new-secret-" + "y" * 40, ["old-secret-" + "x" * 40]
    assert tags.current_fingerprint() != old_fp
    assert tags.fingerprint_of(raw) == old_fp and old_fp in tags.own_fingerprints()
    settings.SECRET_KEY_FALLBACKS = []  # rotated away
    assert tags.fingerprint_of(raw) is None and old_fp not in tags.own_fingerprints()


def _verdict() -> bool:
    state.forget()
    state.refresh_if_due()
    return keyfilter.refuses_untagged()


@pytest.mark.django_db
def test_untagged_strings_are_refused_outright_only_while_every_active_key_is_verifiable(settings):
    assert not _verdict()  # the tag set was never built: every key goes the set's way
    keyfilter.rebuild()
    assert _verdict()  # built, no keys
    user = ada()
    key, _raw = create_api_key(user)
    keyfilter.add(key.digest, key.tag_fp)
    assert _verdict()
    # a key minted before keys carried tags (as the migration leaves old rows: no fingerprint)
    legacy, _ = create_api_key(user)
    type(legacy).objects.filter(pk=legacy.pk).update(tag_fp="")
    keyfilter.rebuild()
    assert not _verdict()
    revoke_api_key(legacy, by=None)
    keyfilter.rebuild()  # the set shrinks to what the active keys use
    assert _verdict()
    # SECRET_KEY rotated without keeping the old one: the existing key's tag is foreign now
    settings.SECRET_KEY = "rotated-" + "z" * 40
    assert not _verdict()
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY, "unused"]
    assert not _verdict()  # the key's secret is still not among them


@pytest.mark.django_db
def test_a_flushed_redis_turns_the_shortcut_off_until_a_rebuild(redis_client):
    keyfilter.rebuild()
    assert _verdict()
    redis_client.flushdb()
    assert not _verdict()
