"""The support desk (issue 6): find a delivery from what a caller says, and act on it.

Search: one box takes a reference (any case), a phone number in any common format (E.164
through `phonenumbers`), an e-mail (any case), a name without case or accents, or a tracking
token or whole tracking URL. Exact matches (reference, phone, e-mail, token) win: when there
is one, only exact matches are listed, so a partial match is never shown as the answer.
Partial matches (a reference containing the text, when it has a digit or a sign such as "-"; a
name containing every word, when it has letters) need three letters or digits in a row.

Actions: each takes the delivery's row lock, checks that what the agent saw is still true
(the slot, the token) and is audited with who and when: a SupportAction row, or for slots
scheduling's BookingChange (by=staff). A form's one-time nonce makes a double submit a no-op.
"""

from __future__ import annotations

import logging
import re
import secrets
import unicodedata
from dataclasses import dataclass
from typing import Any

import phonenumbers
from django.conf import settings
from django.db import connections, transaction
from django.db.models import CharField, Func, Q, QuerySet, Value
from django.utils import timezone

from notifications import render
from notifications.models import Channel, Kind, Notification
from notifications.services import channel_for
from scheduling.models import BookedBy, Booking
from scheduling.services import BookingRefused, BookingResult, booking_book
from tracking import live
from tracking.customer import TOKEN_SHAPE
from tracking.models import Delivery, SupportAction, SupportActionKind, new_tracking_token

logger = logging.getLogger(__name__)

# Longer than any field searched (an e-mail is at most 254): only a URL's token can match.
MAX_FIELD_TERM = 254
# Past this, a search is refused outright (a pasted page, not something a caller said).
MAX_TERM = 2000
MAX_WORDS = 6
MAX_NOTE = 2000
NONCE_SHAPE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_URL_TOKEN = re.compile(r"/t/([A-Za-z0-9_-]{22,64})(?:[/?#]|$)")
# What a trigram index can use: three letters or digits in a row.
_ALNUM_RUN = re.compile(r"[^\W_]{3}")
_REFERENCE_HINT = re.compile(r"\d|[^\w\s]|_")
_PHONE_TEXT = re.compile(r"\+?[\d\s().\-/]+")
_CONTROL = dict.fromkeys([*range(0x20), 0x7F], " ")
# Letters NFKD leaves alone that PostgreSQL's unaccent rules fold (names seen in the field).
_FOLD_EXTRA = str.maketrans(
    {
        "ß": "ss",
        "ł": "l",
        "Ł": "l",
        "ø": "o",
        "Ø": "o",
        "æ": "ae",
        "Æ": "ae",
        "œ": "oe",
        "Œ": "oe",
        "đ": "d",
        "Đ": "d",
        "\u0131": "i",
    }
)


class SupportRefused(Exception):
    """The action was not taken; `message` says why, for the agent."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SupportStale(SupportRefused):
    """The delivery changed since the agent's page was loaded; nothing was done."""


# --- search ---------------------------------------------------------------------------------


def fold_text(value: str | None) -> str | None:
    """Lower case without accents: what porchlight_fold() does in SQL (SQLite runs this one)."""
    if value is None:
        return None
    decomposed = unicodedata.normalize("NFKD", value.translate(_FOLD_EXTRA))
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower()


class Fold(Func):
    """porchlight_fold(text): a SQL function on PostgreSQL (migration 0004, indexed with
    trigrams), a Python function registered on each SQLite connection."""

    function = "porchlight_fold"
    output_field = CharField()


def _fold_ready(using: str = "default") -> None:
    connection = connections[using]
    if connection.vendor == "sqlite":
        connection.ensure_connection()
        connection.connection.create_function("porchlight_fold", 1, fold_text, deterministic=True)


@dataclass(frozen=True)
class SearchPlan:
    """What a search text can mean: exact conditions, partial ones, and what they are."""

    exact: Q | None
    partial: Q | None
    exact_kinds: tuple[str, ...]
    note: str = ""


def search_clean(text: str) -> str:
    """No control characters (NUL cannot reach PostgreSQL), one space between words."""
    return " ".join(text.translate(_CONTROL).split())


def phone_from_search(text: str) -> str:
    """E.164 for a text that is only a phone number ("(956) 555-0123", "+1 956 555 0123"),
    read in PORCHLIGHT_SUPPORT_PHONE_REGION when it has no country code; else ""."""
    if not _PHONE_TEXT.fullmatch(text):
        return ""
    digits = sum(c.isdigit() for c in text)
    if not 8 <= digits <= 15:
        return ""
    try:
        number = phonenumbers.parse(text, settings.PORCHLIGHT_SUPPORT_PHONE_REGION)
    except phonenumbers.NumberParseException:
        return ""
    if not phonenumbers.is_possible_number(number):
        return ""
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def token_from_search(text: str) -> str:
    """The token of a tracking URL (or a bare token); "" if there is none."""
    found = _URL_TOKEN.search(text)
    if found:
        return found.group(1)
    return text if TOKEN_SHAPE.fullmatch(text) else ""


def search_plan(*, text: str) -> SearchPlan:
    if len(text) > MAX_TERM:
        return SearchPlan(
            None, None, (), note="The search text is too long to be a reference, phone or name."
        )
    text = search_clean(text)
    if not text:
        return SearchPlan(None, None, ())
    exact: list[tuple[str, Q]] = []
    token = token_from_search(text)
    if token:
        exact.append(("token", Q(tracking_token=token)))
    if len(text) <= MAX_FIELD_TERM:
        exact.append(("reference", Q(reference__iexact=text)))
        if "@" in text:
            exact.append(("email", Q(email__iexact=text)))
        phone = phone_from_search(text)
        if phone:
            exact.append(("phone", Q(phone=phone)))
    if len(text) > MAX_FIELD_TERM:
        note = (
            "No match: longer than any reference, phone, e-mail or name (only a tracking link is looked for)."
        )
        return SearchPlan(_any(q for _, q in exact), None, tuple(kind for kind, _ in exact), note=note)
    partial = _partial(text)
    note = (
        ""
        if partial is not None
        else "No exact match, and a partial search needs 3 letters or digits in a row."
    )
    return SearchPlan(_any(q for _, q in exact), partial, tuple(kind for kind, _ in exact), note=note)


def _partial(text: str) -> Q | None:
    # Without three letters or digits in a row ("%' OR 1=1", "--", "ab") the trigram indexes
    # cannot narrow anything: no partial search rather than a scan of every delivery.
    if not _ALNUM_RUN.search(text):
        return None
    conditions = []
    # A part of a reference has a digit or a sign ("10045", "ORD-FIND"); a name has letters:
    # each index is read only when the text can be that (reading one for nothing costs as
    # much as a hit).
    if _REFERENCE_HINT.search(text):
        conditions.append(Q(reference__icontains=text))
    words = [word for word in text.split()[:MAX_WORDS] if any(c.isalpha() for c in word)]
    if "@" not in text and any(_ALNUM_RUN.search(word) for word in words):
        name = Q()
        for word in words:
            # Folded on the database's side too, so that both sides fold the same way.
            name &= Q(name_folded__contains=Fold(Value(word)))
        conditions.append(name)
    return _any(conditions)


def _any(conditions: Any) -> Q | None:
    combined: Q | None = None
    for condition in conditions:
        combined = condition if combined is None else combined | condition
    return combined


@dataclass(frozen=True)
class SearchResult:
    queryset: QuerySet[Delivery]
    exact: bool
    note: str


def deliveries_search(*, queryset: QuerySet[Delivery], text: str) -> SearchResult:
    """The deliveries a search box text finds: exact matches if there are any, else partial ones.

    One query to learn whether an exact match exists; the caller runs the list itself.
    """
    plan = search_plan(text=text)
    if plan.exact is not None and queryset.filter(plan.exact).exists():
        kinds = " or ".join(plan.exact_kinds)
        return SearchResult(queryset.filter(plan.exact), True, f"Exact match ({kinds}).")
    if plan.partial is not None:
        _fold_ready(queryset.db)
        found = queryset.alias(name_folded=Fold("customer_name")).filter(plan.partial)
        return SearchResult(found, False, "No exact match: these contain the words searched for (partial).")
    return SearchResult(queryset.none(), False, plan.note or "No exact match.")


# --- actions --------------------------------------------------------------------------------


def support_nonce() -> str:
    """A one-time key for one form of one page load."""
    return secrets.token_urlsafe(16)


def _checked_nonce(nonce: object, kind: str) -> str:
    if not isinstance(nonce, str) or not NONCE_SHAPE.fullmatch(nonce):
        raise SupportRefused("This form has expired: reload the page and try again.")
    return f"{nonce}:{kind}"


def _locked(delivery_id: int) -> Delivery:
    delivery = Delivery.objects.select_for_update().filter(pk=delivery_id).first()
    if delivery is None:
        raise SupportRefused("This delivery no longer exists.")
    return delivery


def _done_before(nonce: str) -> SupportAction | None:
    return SupportAction.objects.filter(nonce=nonce).first()


def _record(
    delivery: Delivery,
    *,
    kind: str,
    user: Any,
    nonce: str,
    text: str = "",
    detail: dict[str, Any] | None = None,
) -> SupportAction:
    return SupportAction.objects.create(
        delivery=delivery,
        kind=kind,
        user=user if user and user.pk else None,
        username=user.get_username() if user else "",
        text=text,
        detail=detail or {},
        nonce=nonce,
        at=timezone.now(),
    )


def support_note_add(*, delivery_id: int, user: Any, text: str, nonce: str) -> tuple[SupportAction, bool]:
    """An internal note; (action, created). Never shown to the customer."""
    return _text_action(
        delivery_id=delivery_id, user=user, text=text, nonce=nonce, kind=SupportActionKind.NOTE, detail={}
    )


CONTACT_CHANNELS = ("phone", "sms", "email", "chat", "other")


def support_contact_record(
    *, delivery_id: int, user: Any, channel: str, text: str, nonce: str
) -> tuple[SupportAction, bool]:
    """A "where is my order" contact, counted on the KPI page; (action, created)."""
    if channel not in CONTACT_CHANNELS:
        raise SupportRefused("Choose how the customer got in touch.")
    return _text_action(
        delivery_id=delivery_id,
        user=user,
        text=text,
        nonce=nonce,
        kind=SupportActionKind.CONTACT,
        detail={"channel": channel},
        required=False,
    )


def _text_action(
    *,
    delivery_id: int,
    user: Any,
    text: str,
    nonce: str,
    kind: str,
    detail: dict[str, Any],
    required: bool = True,
) -> tuple[SupportAction, bool]:
    key = _checked_nonce(nonce, kind)
    text = (text or "").replace("\x00", "").strip()
    if required and not text:
        raise SupportRefused("The note is empty.")
    if len(text) > MAX_NOTE:
        raise SupportRefused(f"Keep it under {MAX_NOTE} characters ({len(text)} now).")
    with transaction.atomic():
        delivery = _locked(delivery_id)
        done = _done_before(key)
        if done is not None:
            return done, False
        return _record(delivery, kind=kind, user=user, nonce=key, text=text, detail=detail), True


def tracking_link_resend(
    *, delivery_id: int, user: Any, channel: str, nonce: str
) -> tuple[SupportAction, bool]:
    """Send the tracking link again by SMS or e-mail, as a notification row like any other
    (sent once, consent checked again at send time, shown in the timeline); (action, created).

    Refused when the customer opted out of that channel (STOP, a bounce), turned it off, or
    has no address for it, and when the link itself no longer works.
    """
    if channel not in (Channel.SMS, Channel.EMAIL):
        raise SupportRefused("Choose SMS or e-mail.")
    key = _checked_nonce(nonce, f"{SupportActionKind.LINK_SENT}-{channel}")
    with transaction.atomic():
        delivery = _locked(delivery_id)
        done = _done_before(key)
        if done is not None:
            return done, False
        if not delivery.token_is_usable(now=timezone.now()):
            raise SupportRefused("This tracking link no longer works: revoke and reissue it first.")
        other = Channel.EMAIL if channel == Channel.SMS else Channel.SMS
        route = channel_for(delivery, exclude=other)
        if route is None:
            raise SupportRefused(_why_not(delivery, channel))
        notification = _link_notification(delivery, route=route, key=key)
        action = _record(
            delivery,
            kind=SupportActionKind.LINK_SENT,
            user=user,
            nonce=key,
            detail={"channel": route[0], "recipient": route[1], "notification": notification.pk},
        )
        transaction.on_commit(lambda: _send_now(notification.pk))
    return action, True


def _why_not(delivery: Delivery, channel: str) -> str:
    address = delivery.phone if channel == Channel.SMS else delivery.email
    if not address:
        return f"The customer has no {'phone number' if channel == Channel.SMS else 'e-mail address'}."
    return (
        f"The customer opted out of {'SMS' if channel == Channel.SMS else 'e-mail'} (or turned it off) "
        "for this delivery: use the other channel, or read the link out."
    )


def _link_notification(delivery: Delivery, *, route: tuple[str, str], key: str) -> Notification:
    channel, recipient = route
    language = render.language_for(delivery)
    text = render.render(delivery, kind=Kind.TRACKING_LINK, channel=channel, language=language, extra={})
    return Notification.objects.create(
        delivery=delivery,
        channel=channel,
        kind=Kind.TRACKING_LINK,
        language=language,
        recipient=recipient,
        subject=text.subject,
        body=text.body,
        html=text.html,
        dedupe_key=f"{delivery.pk}:link:{key}:{channel}",
        next_attempt_at=timezone.now(),
    )


def _send_now(notification_id: int) -> None:
    # A broker that is down must not fail the agent's request: the row is queued in the
    # database and the notifications sweeper sends it.
    from notifications.tasks import notification_send

    try:
        notification_send.delay([notification_id])
    except Exception:
        logger.warning("could not queue notification %s; the sweeper will", notification_id, exc_info=True)


def tracking_token_reissue(
    *, delivery_id: int, user: Any, expected_token: str, nonce: str
) -> tuple[SupportAction, bool]:
    """Revoke the tracking link (its URL answers 404 from now on) and issue a new one.

    `expected_token` is the token the agent's page showed: if another agent reissued it
    meanwhile, nothing is done (SupportStale). Send the new link with tracking_link_resend.
    """
    key = _checked_nonce(nonce, SupportActionKind.TOKEN_REISSUED)
    with transaction.atomic():
        delivery = _locked(delivery_id)
        done = _done_before(key)
        if done is not None:
            return done, False
        if not isinstance(expected_token, str) or not secrets.compare_digest(
            delivery.tracking_token, expected_token
        ):
            raise SupportStale(
                "The tracking link was reissued by someone else since this page was loaded: "
                "nothing was done. Check the page again."
            )
        old_suffix = delivery.tracking_token[-4:]
        delivery.tracking_token = new_tracking_token()
        delivery.token_revoked_at = None
        delivery.save(update_fields=["tracking_token", "token_revoked_at", "updated_at"])
        transaction.on_commit(lambda: live.publish_token_reissued(delivery=delivery), robust=True)
        action = _record(
            delivery,
            kind=SupportActionKind.TOKEN_REISSUED,
            user=user,
            nonce=key,
            detail={"old_token_ends": old_suffix},
        )
    return action, True


def support_slot_book(
    *, delivery_id: int, user: Any, slot_id: object, expected_slot_id: object
) -> BookingResult:
    """Book or move the delivery's slot on the customer's behalf (scheduling's rules, not the
    cutoff; audited as BookingChange by=staff). `expected_slot_id` is the slot the agent's
    page showed ("" for none): if someone moved it meanwhile, nothing is done (SupportStale).
    """
    expected = _slot_pk(expected_slot_id)
    with transaction.atomic():
        delivery = _locked(delivery_id)
        current = Booking.objects.filter(delivery_id=delivery.pk).values_list("slot_id", flat=True).first()
        if current != expected:
            raise SupportStale(
                "The slot was changed (by the customer or another agent) since this page was loaded: "
                "nothing was done. Check the new slot below and try again if needed."
            )
        try:
            return booking_book(
                delivery=delivery,
                slot_id=slot_id,
                by=BookedBy.STAFF,
                staff_user=user.get_username() if user else "",
            )
        except BookingRefused as refusal:
            raise SupportRefused(str(refusal.message)) from refusal


def _slot_pk(value: object) -> int | None:
    if value in (None, ""):
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise SupportRefused("This form has expired: reload the page and try again.")
