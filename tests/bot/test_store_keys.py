"""The store's key names (bot/store/keys.py) spell exactly what existing databases hold."""

from __future__ import annotations

import inspect
from pathlib import Path

from bot.store import keys

EXPECTED = {
    keys.seen_key("telegram", "42"): "seen:telegram:42",
    keys.press_seen_key("wechat", "m1"): "seen:wechat:press:m1",
    keys.inflight_key("telegram:7", 0): "inflight:telegram:7:0",
    keys.inflight_key("telegram:7", 2): "inflight:telegram:7:2",
    keys.conversation_key("telegram:7", "telegram", "-100"): "conv:telegram:7:telegram:-100",
    keys.model_key("telegram:7"): "model:telegram:7",
    keys.NAMES: "names",
    keys.UNSETTLED: "accounts:unsettled",
    keys.ident_key("wechat:o1"): "ident:wechat:o1",
    keys.name_key("wechat:o1"): "name:wechat:o1",
    keys.linked_set("telegram:7"): "linked:telegram:7",
    keys.link_code_key("ABCD2345"): "link:ABCD2345",
    keys.link_claim_key("ABCD2345"): "linkclaim:ABCD2345",
    keys.credit_account_key("grant:telegram:9"): "creditacct:grant:telegram:9",
    keys.payment_account_key("tgstars:c1"): "payacct:tgstars:c1",
    keys.payment_entry_key("wxpay:o1"): "pay:wxpay:o1",
    keys.reversal_account_key("wxpay:o1"): "reverseacct:wxpay:o1",
    keys.trial_key("wechat", "o1"): "trial:wechat:o1",
    keys.refund_key("17"): "refund:17",
    keys.CODES: "codes",
    keys.code_key("ab12"): "code:ab12",
    keys.code_used_key("ab12"): "code:used:ab12",
    keys.code_done_key("ab12"): "code:done:ab12",
    keys.code_tries_key("telegram:7:99"): "code:try:telegram:7:99",
    keys.code_good_key("telegram:7:99"): "code:good:telegram:7:99",
    keys.MJ_OPEN: "mj:open",
    keys.mj_task_key("t1"): "mj:task:t1",
    keys.mj_settle_key("t1"): "mj:settle:t1",
    keys.mj_track_key("t1"): "mj:track:t1",
    keys.tg_update_key(123, 456): "tg:update:123:456",
    keys.STARS_PENDING: "tgstars:pending",
    keys.stars_pending_key("c1"): "tgstars:pending:c1",
    keys.stars_receipt_key("c1"): "tgstars:receipt:c1",
    keys.wx_token_key("wxapp"): "wx:token:wxapp",
    keys.wx_lock_key(keys.wx_token_lock("wxapp")): "wx:lock:token:wxapp",
    keys.wx_lock_key(keys.wx_user_lock("o1")): "wx:lock:user:o1",
    keys.wx_outbox_key("o1"): "wx:outbox:o1",
    keys.wx_busy_set("o1"): "wx:busy:o1",
    keys.wx_answer_key("gh:1"): "wx:ans:gh:1",
    keys.wx_image_actions_key("o1"): "wx:img:o1",
    keys.wx_seen_key("gh:1"): "wx:seen:gh:1",
    keys.wx_tries_key("gh:1"): "wx:tries:gh:1",
    keys.WXPAY_OPEN: "wxpay:open",
    keys.wxpay_order_key("o1"): "wxpay:order:o1",
    keys.wxpay_paid_key("o1"): "wxpay:paid:o1",
    keys.wxpay_not_found_key("o1"): "wxpay:notfound:o1",
}


def test_every_key_is_spelled_as_before() -> None:
    for built, expected in EXPECTED.items():
        assert built == expected


def test_every_name_is_checked_here_and_documented() -> None:
    source = Path(__file__).read_text()
    for name, value in vars(keys).items():
        if inspect.isfunction(value) and value.__module__ == keys.__name__:
            assert value.__doc__, name
            assert f"keys.{name}(" in source, name
        elif isinstance(value, str) and name.isupper() and not name.endswith("_PREFIX"):
            assert f"keys.{name}:" in source, name


def test_relaxed_keys_are_dedupe_marks_leases_and_histories() -> None:
    assert keys.RELAXED_PREFIXES == ("seen:", "inflight:", "conv:")
