"""The console's message catalogues: zh-CN by default, English on request.

A language's catalogue is ``i18n/<lang>.json`` merged with every ``i18n/<part>.<lang>.json`` (one
part per area of the pages, e.g. ``study.zh-CN.json``); a key defined twice is an error.

The language is the ``lang`` cookie (the toggle), else the first of Accept-Language we have,
else zh-CN. A key missing from a catalogue renders as ``⟦key⟧`` (and is logged), so a page with
an untranslated string is visible in a test rather than silently English.
"""

from __future__ import annotations

import json
import logging
from functools import cache
from importlib import resources

from aiohttp import web

log = logging.getLogger(__name__)

LANGS = ("zh-CN", "en")
DEFAULT_LANG = "zh-CN"
COOKIE = "lang"
MISSING = "⟦{}⟧"


@cache
def catalogue(lang: str) -> dict[str, str]:
    folder = resources.files("notifier.console").joinpath("i18n")
    names = [f"{lang}.json"] + sorted(
        f.name for f in folder.iterdir() if f.name.endswith(f".{lang}.json") and f.name != f"{lang}.json"
    )
    data: dict[str, str] = {}
    for name in names:
        part: dict[str, str] = json.loads(folder.joinpath(name).read_text("utf-8"))
        twice = sorted(data.keys() & part.keys())
        if twice:
            raise ValueError(f"console catalogue {name} defines keys again: {', '.join(twice[:5])}")
        data.update(part)
    return data


def negotiate(request: web.Request) -> str:
    chosen = request.cookies.get(COOKIE)
    if chosen in LANGS:
        return chosen
    for part in request.headers.get("Accept-Language", "").split(","):
        tag = part.split(";")[0].strip().lower()
        if tag.startswith("zh"):
            return "zh-CN"
        if tag.startswith("en"):
            return "en"
    return DEFAULT_LANG


def translate(lang: str, key: str, **values: object) -> str:
    text = catalogue(lang).get(key)
    if text is None:
        log.warning("untranslated console key %s (%s)", key, lang)
        return MISSING.format(key)
    return text.format(**values) if values else text
