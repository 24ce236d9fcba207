"""SMS length counted as carriers count it, and every template within two segments."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from notifications import render
from notifications.models import Kind
from notifications.segments import gsm_friendly, sms_length
from tests.notifications.conftest import make_delivery

TEMPLATES = Path(__file__).resolve().parents[2] / "templates" / "notifications"


def test_gsm7_counts_septets_and_extension_characters_twice():
    assert sms_length("a" * 160) == sms_length("a" * 160).__class__("GSM-7", 160, 1)
    assert sms_length("a" * 161).segments == 2
    assert sms_length("a" * 306).segments == 2 and sms_length("a" * 307).segments == 3
    assert sms_length("€" * 80).units == 160 and sms_length("€" * 81).segments == 2
    assert sms_length("ñé¿¡Ü").encoding == "GSM-7"


def test_ucs2_counts_utf16_units_so_an_emoji_is_two():
    assert sms_length("á" * 70) == sms_length("á" * 70).__class__("UCS-2", 70, 1)
    assert sms_length("á" * 71).segments == 2
    assert sms_length("😀" * 35).units == 70 and sms_length("😀" * 35).segments == 1
    assert sms_length("😀" * 36).segments == 2
    assert sms_length("a" * 1599 + "😀").segments == 24  # 1,601 units / 67: a 1,600-character body


def test_spanish_accents_that_gsm7_lacks_are_spelled_without_them():
    assert (
        gsm_friendly("Síguelo en dirección, mañana \u201cpronto\u201d \u2013 ya\u2026")
        == 'Siguelo en direccion, mañana "pronto" - ya...'
    )
    assert sms_length(gsm_friendly("Síguelo, ¿cuándo? ¡Mañana!")).encoding == "GSM-7"
    assert gsm_friendly("王芳 😀") == "王芳 😀"  # nothing to spell differently: stays UCS-2


def test_every_kind_has_an_sms_and_an_email_triplet_in_both_languages():
    for language in render.LANGUAGES:
        for kind in Kind.values:
            assert (TEMPLATES / "sms" / language / f"{kind}.txt").exists()
            for part in ("subject.txt", "body.txt", "body.html"):
                assert (TEMPLATES / "email" / language / f"{kind}-{part}").exists(), (language, kind, part)


LONG_NAMES = [
    "Maximiliano Alejandro de la Santísima Trinidad Fernández-Villaverde",
    "Wolfeschlegelsteinhausenbergerdorff Hubert Blaine",
    "王芳芳芳芳芳芳芳芳芳芳芳芳芳芳芳芳芳芳芳芳芳",
    "😀😀😀😀😀😀😀😀😀😀😀😀 Emoji",
    'Tom & <Jerry> "O\'Brien"',
]


@pytest.mark.django_db
@pytest.mark.parametrize("name", LONG_NAMES)
@pytest.mark.parametrize("language", render.LANGUAGES)
def test_every_sms_template_stays_within_two_segments_with_long_names(name, language, settings):
    from scheduling.models import Zone

    settings.PORCHLIGHT_PUBLIC_URL = "https://track.porchlight-deliveries.example.com"
    Zone.objects.get_or_create(
        code="north", defaults={"name": "North"}
    )  # the longest text: with the slots link
    now = timezone.now()
    delivery = make_delivery(
        customer_name=name, locale=language, zone_code="north", eta=now + timedelta(hours=1),
        eta_window_start=now, eta_window_end=now + timedelta(hours=2), stops_before=2,
    )  # fmt: skip
    for kind in Kind.values:
        text = render.render(delivery, kind=kind, channel="sms", language=language, extra={}).body
        assert sms_length(text).segments <= 2, (kind, sms_length(text), text)
        assert "&amp;" not in text and "&lt;" not in text  # plain text, never escaped
        assert delivery.tracking_token in text
        if kind == "received":
            assert "/slots/" in text


@pytest.mark.django_db
def test_email_text_stays_plain_and_html_is_escaped():
    delivery = make_delivery(
        customer_name="<script>Tom&Co</script> Smith",
        reference="R&D<1>",
        status="attempt_failed",
        status_reason="<b>dog</b>",
    )
    rendered = render.render(delivery, kind="attempt_failed", channel="email", language="en", extra={})
    assert "<script>" in rendered.body and "R&D<1>" in rendered.body and "<b>dog</b>" in rendered.body
    assert "<script>" not in rendered.html and "&lt;script&gt;Tom&amp;Co" in rendered.html
    assert "R&amp;D&lt;1&gt;" in rendered.html and "&lt;b&gt;dog" in rendered.html
    assert (
        "R&amp;D" not in rendered.subject and "R&D<1>" not in rendered.subject
    )  # attempt_failed subject has no reference


@pytest.mark.django_db
@hsettings(max_examples=60, deadline=None)
@given(
    name=st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=120
    ).filter(lambda s: s.strip()),
    language=st.sampled_from(render.LANGUAGES),
    kind=st.sampled_from(Kind.values),
)
def test_any_name_in_any_template_fits_two_segments(name, language, kind):
    delivery = make_delivery(customer_name=name, locale=language)
    text = render.render(delivery, kind=kind, channel="sms", language=language, extra={}).body
    assert sms_length(text).segments <= 2
