"""The SMS backends of the configuration contract, and Twilio through its real client."""

from __future__ import annotations

import io

import pytest
from django.core.exceptions import ImproperlyConfigured

from notifications.backends import SMSError, SMSMessage, get_sms_backend, locmem
from notifications.backends import twilio as twilio_backend
from tests.notifications.fakes import RecordingTwilioHttp, twilio_error


def test_the_console_backend_prints_the_message_with_its_length():
    stream = io.StringIO()
    backend = get_sms_backend("notifications.backends.console.SMSBackend", stream=stream)
    message = SMSMessage(to="+15551230000", body="Hola 😀")
    assert backend.send_messages([message]) == 1
    assert "SMS to +15551230000" in stream.getvalue() and "Hola 😀" in stream.getvalue()
    assert "UCS-2" in stream.getvalue() and message.provider_id.startswith("console-")


def test_the_locmem_backend_keeps_messages_in_its_outbox():
    assert (
        get_sms_backend("notifications.backends.locmem.SMSBackend").send_messages(
            [SMSMessage(to="+1", body="x")]
        )
        == 1
    )
    assert [m.body for m in locmem.outbox] == ["x"]


def test_the_filebased_backend_writes_one_file_per_message(tmp_path, settings):
    settings.SMS_FILE_PATH = str(tmp_path)
    backend = get_sms_backend("notifications.backends.filebased.SMSBackend")
    messages = [SMSMessage(to=f"+1555000000{i}", from_="+15005550006", body=f"body {i} ñ") for i in range(3)]
    assert backend.send_messages(messages) == 3
    files = sorted(tmp_path.glob("*.txt"))
    assert len(files) == 3
    contents = {f.read_text(encoding="utf-8") for f in files}
    assert "To: +15550000001\nFrom: +15005550006\n\nbody 1 ñ\n" in contents


def test_the_filebased_backend_needs_a_folder(settings):
    settings.SMS_FILE_PATH = ""
    with pytest.raises(ImproperlyConfigured):
        get_sms_backend("notifications.backends.filebased.SMSBackend")


def test_twilio_is_called_through_its_client_with_a_status_callback(settings):
    http = RecordingTwilioHttp()
    backend = twilio_backend.SMSBackend(http_client=http)
    message = SMSMessage(
        to="+15551230000", body="Hi", status_callback="https://porch.example/webhooks/twilio/status/?n=7"
    )
    assert backend.send_messages([message]) == 1
    [request] = http.requests
    assert request["method"] == "POST"
    assert (
        request["uri"]
        == f"https://api.twilio.com/2010-04-01/Accounts/{settings.TWILIO_ACCOUNT_SID}/Messages.json"
    )
    assert request["data"] == {
        "To": "+15551230000",
        "Body": "Hi",
        "From": "+15005550006",
        "StatusCallback": "https://porch.example/webhooks/twilio/status/?n=7",
    }
    assert request["auth"] == (settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN)
    assert message.provider_id == "SM" + "1".zfill(32)


def test_a_messaging_service_sender_is_sent_as_such(settings):
    settings.TWILIO_FROM = "MG" + "a" * 32
    http = RecordingTwilioHttp()
    twilio_backend.SMSBackend(http_client=http).send_messages([SMSMessage(to="+15551230000", body="Hi")])
    assert http.requests[0]["data"]["MessagingServiceSid"] == "MG" + "a" * 32
    assert "From" not in http.requests[0]["data"]


@pytest.mark.parametrize(
    ("answer", "code", "retry"),
    [
        (twilio_error(21610), "21610", False),  # the customer texted STOP to Twilio
        (twilio_error(21211), "21211", False),  # not a valid number
        (twilio_error(21999), "21999", False),  # any other 4xx
        (twilio_error(20429, 429), "20429", True),  # too many requests
        (twilio_error(20500, 503), "20500", True),  # Twilio is down
    ],
)
def test_twilio_errors_say_whether_to_retry(answer, code, retry):
    backend = twilio_backend.SMSBackend(http_client=RecordingTwilioHttp(lambda n: answer))
    with pytest.raises(SMSError) as raised:
        backend.send_messages([SMSMessage(to="+15551230000", body="Hi")])
    assert (raised.value.code, raised.value.retry) == (code, retry)


def test_a_connection_error_is_retried():
    class Down(RecordingTwilioHttp):
        def request(self, *args, **kwargs):
            raise ConnectionError("connection refused")

    with pytest.raises(SMSError) as raised:
        twilio_backend.SMSBackend(http_client=Down()).send_messages(
            [SMSMessage(to="+15551230000", body="Hi")]
        )
    assert raised.value.retry is True


def test_twilio_refuses_to_start_without_credentials(settings):
    settings.TWILIO_AUTH_TOKEN = ""
    with pytest.raises(ImproperlyConfigured):
        twilio_backend.SMSBackend(http_client=RecordingTwilioHttp())


def test_the_twilio_client_is_imported_in_exactly_one_module():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    importers = [
        str(path.relative_to(root))
        for folder in ("config", "tracking", "notifications", "scheduling")
        for path in (root / folder).rglob("*.py")
        if "twilio.rest" in path.read_text(encoding="utf-8")
    ]
    assert importers == ["notifications/backends/twilio.py"]
