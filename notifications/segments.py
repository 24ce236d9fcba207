"""SMS length as carriers count it: GSM-7 septets or UCS-2 code units, and segments.

One character outside GSM-7 turns the whole message into UCS-2 (70 units a segment instead of
160), so text is first brought into GSM-7 where that loses nothing a reader needs: accents
that GSM-7 lacks (á, í, ó, ú) and typographic quotes and dashes. Names in other scripts or with
emoji stay as they are and are counted as UCS-2.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")  # two septets each (escape + char)
MAX_SEGMENTS = 2

_REPLACEMENTS = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201c": '"', "\u201d": '"', "\u201e": '"',
    "\u2013": "-", "\u2014": "-", "\u2212": "-", "\u2026": "...", "\u00a0": " ", "\u2009": " ",
    "\u202f": " ", "\t": " ",
}  # fmt: skip


@dataclass(frozen=True)
class Length:
    encoding: str  # "GSM-7" or "UCS-2"
    units: int  # septets or UTF-16 code units
    segments: int


def gsm_friendly(text: str) -> str:
    """The text with characters GSM-7 lacks replaced by their nearest GSM-7 spelling, where one exists."""
    out = []
    for char in text:
        if char in GSM7_BASIC or char in GSM7_EXTENSION:
            out.append(char)
        elif char in _REPLACEMENTS:
            out.append(_REPLACEMENTS[char])
        else:
            base = unicodedata.normalize("NFKD", char)[:1]
            out.append(base if base and base in GSM7_BASIC else char)
    return "".join(out)


def sms_length(text: str) -> Length:
    if all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text):
        units = sum(2 if c in GSM7_EXTENSION else 1 for c in text)
        return Length("GSM-7", units, 1 if units <= 160 else math.ceil(units / 153))
    units = len(text.encode("utf-16-le")) // 2  # an emoji is two units, as on the wire
    return Length("UCS-2", units, 1 if units <= 70 else math.ceil(units / 67))


def fits(text: str, *, segments: int = MAX_SEGMENTS) -> bool:
    return sms_length(text).segments <= segments
