"""The web console (``/console/``) for secretaries and admins, and the member's pages (``/m/``).

Server-rendered (aiohttp-jinja2) pages with a strict CSP, vendored htmx + its SSE extension
(static/vendor/, pinned, with their licences), every string from a catalogue (i18n/). Handlers
are thin: they call the API's own handlers as the session's principal (apicall.py).
"""

from __future__ import annotations

from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from notifier.console import meetings, member, notices, points, records, send, signin, study, units
from notifier.console.pages import add_security_headers

HERE = Path(__file__).parent


async def _home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/console/notices")


async def _to_slash(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther(request.path + "/")


def setup(app: web.Application) -> None:
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("notifier.console", "templates"),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined,
    )
    app.on_response_prepare.append(add_security_headers)
    r = app.router
    r.add_get("/console", _to_slash)
    r.add_get("/console/", _home)
    r.add_get("/console/sign-in", signin.sign_in_form)
    r.add_post("/console/sign-in", signin.sign_in_with_key)
    r.add_get("/console/in/{token}", signin.link_page)
    r.add_post("/console/in/{token}", signin.use_link)
    r.add_post("/console/sign-out", signin.sign_out)
    r.add_get("/console/lang/{lang}", signin.set_lang)
    r.add_post("/console/unit", signin.switch_unit)
    r.add_get("/console/notices", notices.list_notices)
    r.add_get("/console/notices/{notice_id}", notices.show_notice)
    r.add_get("/console/notices/{notice_id}/stream", notices.notice_stream)
    r.add_get("/console/notices/{notice_id}/roll-call", notices.roll_call_fragment)
    r.add_get("/console/notices/{notice_id}/roll-call.csv", notices.roll_call_csv)
    r.add_get("/console/notices/{notice_id}/recipients/{member_id}", notices.member_timeline)
    r.add_post("/console/notices/{notice_id}/remind", notices.remind_now)
    r.add_post("/console/notices/{notice_id}/recall", notices.recall_notice)
    r.add_get("/console/send", send.send_form)
    r.add_post("/console/send", send.send_post)
    r.add_get("/console/send/count", send.recipient_count)
    r.add_post("/console/send/edit", send.send_edit)
    r.add_get("/console/units", units.show_units)
    r.add_get("/console/reports", units.show_reports)
    r.add_get("/console/points", points.show_points)
    r.add_get("/console/exams", study.list_exams)
    r.add_get("/console/exams/new", study.new_exam)
    r.add_post("/console/exams", study.create_exam)
    r.add_get("/console/lessons/new", study.new_lesson)
    r.add_post("/console/lessons", study.create_lesson)
    r.add_get("/console/quizzes/{quiz_id}/ranking", study.show_ranking)
    r.add_get("/console/quizzes/{quiz_id}/ranking.csv", study.ranking_csv)
    r.add_get("/m/quizzes/{quiz_id}", study.member_quiz)
    r.add_post("/m/quizzes/{quiz_id}/attempts", study.member_start)
    r.add_get("/m/quizzes/{quiz_id}/attempts/{attempt_id}", study.member_attempt)
    r.add_post("/m/quizzes/{quiz_id}/attempts/{attempt_id}", study.member_answer)
    r.add_get("/console/meetings", meetings.list_meetings)
    r.add_get("/console/meetings/new", meetings.new_meeting)
    r.add_post("/console/meetings/new", meetings.create_meeting)
    r.add_get("/console/meetings/{notice_id}", meetings.show_meeting)
    r.add_get("/console/meetings/{notice_id}/checkins", meetings.checkins_fragment)
    r.add_get("/m/meetings/{notice_id}", meetings.member_meeting)
    r.add_post("/m/meetings/{notice_id}/checkins", meetings.member_checkin)
    r.add_post("/m/meetings/{notice_id}/checkins/{checkin_id}/photo", meetings.member_checkin_photo)
    r.add_get("/console/meetings/{notice_id}/checkins/{checkin_id}/photo", meetings.checkin_photo)
    r.add_get("/console/meetings/{notice_id}/record", records.show_record)
    r.add_post("/console/meetings/{notice_id}/minutes", records.post_minutes)
    r.add_post("/console/meetings/{notice_id}/photos", records.post_photo)
    r.add_get("/console/meetings/{notice_id}/photos/{photo_id}", records.photo)
    r.add_post("/console/meetings/{notice_id}/absences", records.post_absence)
    r.add_get("/console/supervision", records.show_supervision)
    r.add_post("/m/meetings/{notice_id}/leave", records.member_leave)
    r.add_get("/m", _to_slash)
    r.add_get("/m/", member.inbox)
    r.add_get("/m/notices/{notice_id}", member.show)
    r.add_post("/m/notices/{notice_id}/read", member.mark_read)
    r.add_post("/m/notices/{notice_id}/views", points.open_view)
    r.add_post("/m/notices/{notice_id}/views/{view_id}", points.update_view)
    r.add_get("/m/r/{token}", member.from_read_link)
    r.add_post("/m/r/{token}", member.use_read_link)
    r.add_get("/m/manifest.webmanifest", member.manifest)
    r.add_get("/m/sw.js", member.service_worker)
    r.add_get("/m/push/key", member.push_key)
    r.add_post("/m/push/subscribe", member.push_subscribe)
    r.add_static("/console/static/", HERE / "static", append_version=False)
