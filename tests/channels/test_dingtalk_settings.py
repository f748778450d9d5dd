"""The DingTalk setting names issue 10 fixes, so that operators and scripts can rely on them:
each is read from the environment under exactly that name, with the defaults the issue gives,
and registers the DingTalk channels; the README's channel table has a row per DingTalk channel
naming its settings and what the platform account must provide."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from notifier.channels.registry import build_registry
from notifier.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"
NAMES = {
    "NOTIFIER_DINGTALK__APP_KEY": "dingkey",
    "NOTIFIER_DINGTALK__APP_SECRET": "app-secret",
    "NOTIFIER_DINGTALK__AGENT_ID": "4242",
    "NOTIFIER_DINGTALK__ROBOT_CODE": "dingrobot",
    "NOTIFIER_DINGTALK__CALLBACK_TOKEN": "cb-token",
    "NOTIFIER_DINGTALK__CALLBACK_AES_KEY": "a" * 43,
    "NOTIFIER_DINGTALK__OAPI_URL": "http://127.0.0.1:1/oapi",
    "NOTIFIER_DINGTALK__API_URL": "http://127.0.0.1:1/api",
    "NOTIFIER_DINGTALK__READ_POLL": "false",
}


async def test_the_issues_setting_names_are_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defaults = Settings().dingtalk
    assert (defaults.oapi_url, defaults.api_url, defaults.read_poll) == (
        "https://oapi.dingtalk.com",
        "https://api.dingtalk.com",
        True,
    )
    for name, value in NAMES.items():
        monkeypatch.setenv(name, value)
    d = Settings().dingtalk
    secrets = (d.app_secret, d.callback_token, d.callback_aes_key)
    assert [s.get_secret_value() if s else None for s in secrets] == ["app-secret", "cb-token", "a" * 43]
    assert (d.app_key, d.agent_id, d.robot_code) == ("dingkey", 4242, "dingrobot")
    assert (d.oapi_url, d.api_url, d.read_poll) == (
        "http://127.0.0.1:1/oapi",
        "http://127.0.0.1:1/api",
        False,
    )
    monkeypatch.setenv("NOTIFIER_DINGTALK__GROUP_ROBOTS", "true")
    registry = build_registry(Settings())
    registered = set(registry.ids())
    await registry.close()
    assert {"dingtalk", "dingtalk_ding", "dingtalk_robot"} <= registered, registered


def test_the_readme_has_a_row_per_dingtalk_channel_with_what_the_account_must_provide() -> None:
    rows = {
        cells[0].strip("` "): cells
        for line in README.read_text(encoding="utf-8").splitlines()
        if line.startswith("| `dingtalk")
        for cells in [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]]
    }
    assert set(rows) == {"dingtalk", "dingtalk_ding", "dingtalk_robot"}
    assert all(len(cells) == 5 and all(cells) for cells in rows.values()), rows
    documented = rows["dingtalk"][3] + rows["dingtalk_ding"][3]
    for name in NAMES:
        assert name.removeprefix("NOTIFIER_") in documented, name
    assert "RobotCode" in rows["dingtalk_ding"][4] and "AppKey" in rows["dingtalk"][4]
    assert "secret" in rows["dingtalk_robot"][4]
