from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _

from notifications.render import LANGUAGES

LANGUAGE_NAMES = {"en": "English", "es": "Español"}


class PreferenceForm(forms.Form):
    sms = forms.BooleanField(required=False, label=_("Text messages (SMS)"))
    email = forms.BooleanField(required=False, label=_("Email"))
    language = forms.ChoiceField(
        label=_("Language of our messages"), choices=[(code, LANGUAGE_NAMES[code]) for code in LANGUAGES]
    )
