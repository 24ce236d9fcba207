"""Provider webhooks (Twilio inbound SMS and status callbacks, anymail tracking) and the
customer's notification preferences page."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseForbidden
from django.shortcuts import redirect, render
from django.utils import translation
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST
from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse

from notifications import feedback
from notifications.forms import PreferenceForm
from notifications.render import language_for
from notifications.services import preference_update

logger = logging.getLogger(__name__)


def _get_delivery_or_404(token: str) -> Any:
    from tracking.customer import delivery_for_token

    delivery = delivery_for_token(token=token)
    if delivery is None:
        raise Http404("no such delivery")
    return delivery


def _twilio_is_authentic(request: HttpRequest) -> bool:
    """Twilio signs the URL it called (our public URL, whatever a proxy made of it) plus the
    sorted POST parameters."""
    token = settings.TWILIO_AUTH_TOKEN
    signature = request.headers.get("X-Twilio-Signature", "")
    if not token or not signature or len(signature) > 200:
        return False
    url = settings.PORCHLIGHT_PUBLIC_URL + request.get_full_path()
    return bool(RequestValidator(token).validate(url, request.POST, signature))


@csrf_exempt
@require_POST
def twilio_inbound(request: HttpRequest) -> HttpResponse:
    if not _twilio_is_authentic(request):
        return HttpResponseForbidden("invalid signature")
    reply = feedback.sms_inbound_handle(
        sender=request.POST.get("From", ""),
        body=request.POST.get("Body", ""),
        provider_id=request.POST.get("MessageSid", "") or request.POST.get("SmsSid", ""),
    )
    twiml = MessagingResponse()
    if reply is not None:
        twiml.message(reply.text)
    return HttpResponse(str(twiml), content_type="text/xml")


@csrf_exempt
@require_POST
def twilio_status(request: HttpRequest) -> HttpResponse:
    if not _twilio_is_authentic(request):
        return HttpResponseForbidden("invalid signature")
    sid = request.POST.get("MessageSid", "")[:64]
    status = request.POST.get("MessageStatus", "")[:20]
    raw_id = request.GET.get("n", "")
    notification_id = int(raw_id) if raw_id.isascii() and raw_id.isdigit() and len(raw_id) < 18 else None
    key = request.headers.get("I-Twilio-Idempotency-Token", "")[:120] or f"{sid}:{status}"
    feedback.sms_status_record(
        key=f"twilio:{key}",
        notification_id=notification_id,
        provider_id=sid,
        status=status,
        error_code=request.POST.get("ErrorCode", "")[:32],
        payload={k: v[:500] for k, v in list(request.POST.items())[:50]},
    )
    return HttpResponse(status=204)


def anymail_tracking_received(sender: object, event: Any, esp_name: str, **kwargs: Any) -> None:
    """anymail's `tracking` signal: an ESP told us what happened to an email."""
    metadata = event.metadata if isinstance(event.metadata, dict) else {}
    raw_id = str(metadata.get("notification_id", ""))
    identity = event.event_id or f"{event.message_id}:{event.event_type}:{event.recipient}:{event.timestamp}"
    feedback.email_event_record(
        key=f"anymail:{esp_name}:{identity}",
        notification_id=int(raw_id) if raw_id.isdigit() and len(raw_id) < 18 else None,
        provider_id=str(event.message_id or "")[:100],
        event_type=str(event.event_type or ""),
        recipient=str(event.recipient or "")[:254],
        payload={
            "event_type": str(event.event_type),
            "recipient": str(event.recipient or ""),
            "description": str(event.description or "")[:500],
            "reject_reason": str(event.reject_reason or ""),
        },
    )


@require_http_methods(["GET", "POST"])
def preferences(request: HttpRequest, token: str) -> HttpResponse:
    delivery = _get_delivery_or_404(token)
    current = getattr(delivery, "notification_preference", None)
    language = language_for(delivery)
    initial = {
        "sms": current.sms if current else True,
        "email": current.email if current else True,
        "language": language,
    }
    form = PreferenceForm(request.POST if request.method == "POST" else None, initial=initial)
    if request.method == "POST" and form.is_valid():
        preference_update(delivery=delivery, **form.cleaned_data)
        with translation.override(form.cleaned_data["language"]):
            messages.success(request, _("Your choices are saved."))
        return redirect("notification_preferences", token=token)
    with translation.override(language):
        return render(
            request,
            "notifications/preferences.html",
            {
                "delivery": delivery,
                "form": form,
                "has_phone": bool(delivery.phone),
                "has_email": bool(delivery.email),
            },
            status=400 if form.is_bound else 200,
        )
