"""Every key the bot keeps in its Store, named once: the store's key space on one page.

Values are strings and sets are sets of strings; keys and set names are separate namespaces
(SQL: tables bot_kv and bot_kv_sets; Redis: `creditbot:kv:` + key and `creditbot:set:` + name,
see bot/store/redis_store.py). The strings here are what existing databases hold: changing one
loses what was stored under it, so a new shape is a new name, never an edit.

A few store keys are also, on purpose, the wallet idempotency key of the money move they record
(`trial_key`, `refund_key`); that is said where it is so. Wallet keys otherwise live with the
code that makes the move.
"""

from __future__ import annotations

# --- messages, leases, conversations (bot/core.py, bot/limits.py, bot/conversations.py) ------

SEEN_PREFIX = "seen:"  # every dedupe mark of the core (messages and presses)
INFLIGHT_PREFIX = "inflight:"  # every in-flight lease
CONVERSATION_PREFIX = "conv:"  # every stored history


def seen_key(platform: str, message_id: str) -> str:
    """A handled message's dedupe mark (value: the delivery's token), so a redelivery is
    dropped; expires after DEDUPE_TTL_SECONDS."""
    return f"{SEEN_PREFIX}{platform}:{message_id}"


def press_seen_key(platform: str, press_id: str) -> str:
    """A handled button press's dedupe mark (`press_id`: the press's own unique id)."""
    return f"{SEEN_PREFIX}{platform}:press:{press_id}"


def inflight_key(account: str, slot: int) -> str:
    """One of an account's in-flight slots (MAX_INFLIGHT_PER_USER), a lease with a ttl whose
    value is its holder's token."""
    return f"{INFLIGHT_PREFIX}{account}:{slot}"


def conversation_key(account: str, platform: str, chat_id: str) -> str:
    """The stored history (JSON) of one chat of an account."""
    return f"{CONVERSATION_PREFIX}{account}:{platform}:{chat_id}"


def model_key(account: str) -> str:
    """The model an account chose with /model (absent: the default model)."""
    return f"model:{account}"


# Keys whose loss after a power cut is harmless (a dedupe mark, a lease, a history): the SQLite
# store commits a batch made only of them without waiting for the disk (bot/store/sqlite_store).
RELAXED_PREFIXES = (SEEN_PREFIX, INFLIGHT_PREFIX, CONVERSATION_PREFIX)


# --- identities and linked accounts (bot/accounts.py) ------------------------------------------

NAMES = "names"
"""Set of identities with a recorded display name (for `admin find`)."""

UNSETTLED = "accounts:unsettled"
"""Set of linked-away accounts still holding credits (the sweeper moves them on)."""


def ident_key(ident: str) -> str:
    """An identity's link ("telegram:42" -> the account it pays from); absent until /link."""
    return f"ident:{ident}"


def name_key(ident: str) -> str:
    """An identity's display name, for `admin find`."""
    return f"name:{ident}"


def linked_set(account: str) -> str:
    """Set of the identities linked to `account` (so a later /link moves them all)."""
    return f"linked:{account}"


def link_code_key(code: str) -> str:
    """A one-time /link code (value: the account it joins); expires after LINK_TTL_SECONDS."""
    return f"link:{code}"


def link_claim_key(code: str) -> str:
    """The plan (JSON: identity, source, target, amount) of the first identity to use a /link
    code, so a retry finishes the same move."""
    return f"linkclaim:{code}"


# --- money moves recorded beside the wallet (bot/accounts.py, bot/core.py, bot/commands.py) ----


def credit_account_key(key: str) -> str:
    """The account first credited under wallet key `key` (pinned: a retry after a /link
    credits the same account, never a second one)."""
    return f"creditacct:{key}"


PAY_ACCOUNT_PREFIX = "payacct:"
PAY_ENTRY_PREFIX = "pay:"
REVERSE_ACCOUNT_PREFIX = "reverseacct:"


def payment_account_key(key: str) -> str:
    """The account a payment with wallet key `key` was first credited to (pinned)."""
    return f"{PAY_ACCOUNT_PREFIX}{key}"


def payment_entry_key(key: str) -> str:
    """The ledger entry id that credited the payment with wallet key `key`."""
    return f"{PAY_ENTRY_PREFIX}{key}"


def reversal_account_key(key: str) -> str:
    """The account a refunded payment's reversal takes its credits back from (pinned)."""
    return f"{REVERSE_ACCOUNT_PREFIX}{key}"


def trial_key(platform: str, user_id: str) -> str:
    """Set once a platform user got the trial credits; also the wallet key of that credit."""
    return f"trial:{platform}:{user_id}"


def refund_key(entry_id: str) -> str:
    """Marks charge `entry_id` as made good (value: the refund's entry id); also the wallet key
    of that refund, from /refund in chat, `admin refund` or `admin compensate`."""
    return f"refund:{entry_id}"


# --- redemption codes (bot/codes.py) ------------------------------------------------------------

CODES = "codes"
"""Set of every code's hash, for listing."""


def code_key(code_hash: str) -> str:
    """A code's record (JSON: amount, expiry, batch), by the hash of the code."""
    return f"code:{code_hash}"


def code_used_key(code_hash: str) -> str:
    """Who claimed a code, and when (JSON), or its revocation: written once."""
    return f"code:used:{code_hash}"


def code_done_key(code_hash: str) -> str:
    """Set when a claimed code's credit is done (a claim without it is finished on retry)."""
    return f"code:done:{code_hash}"


def code_tries_key(bucket: str) -> str:
    """Redemption attempts of one person in one time window (`bucket`: "user:window")."""
    return f"code:try:{bucket}"


def code_good_key(bucket: str) -> str:
    """Attempts in the same window that named a real code (not counted as wrong guesses)."""
    return f"code:good:{bucket}"


# --- Midjourney tasks (bot/imagine.py) ----------------------------------------------------------

MJ_OPEN = "mj:open"
"""Set of the ids of Midjourney tasks not settled yet (resumed after a restart)."""


def mj_task_key(task_id: str) -> str:
    """A Midjourney task's record (JSON: hold, owner, status, image)."""
    return f"mj:task:{task_id}"


def mj_settle_key(task_id: str) -> str:
    """A task's outcome ("capture" or "void"), claimed once, so a settle is finished the same
    way after a crash."""
    return f"mj:settle:{task_id}"


def mj_track_key(task_id: str) -> str:
    """The lease of the one process polling a task (value: its token; short ttl)."""
    return f"mj:track:{task_id}"


# --- Telegram (adapters/telegram) ---------------------------------------------------------------


def tg_update_key(bot_id: int, update_id: int) -> str:
    """A Telegram update this bot has handled (dedupe of redelivered updates)."""
    return f"tg:update:{bot_id}:{update_id}"


STARS_PENDING = "tgstars:pending"
"""Set of the charge ids of Stars payments paid but maybe not credited yet (retried)."""


STARS_PENDING_PREFIX = f"{STARS_PENDING}:"
STARS_RECEIPT_PREFIX = "tgstars:receipt:"


def stars_pending_key(charge_id: str) -> str:
    """A pending Stars payment (JSON: user, credits, stars) until its credit is confirmed."""
    return f"{STARS_PENDING_PREFIX}{charge_id}"


def stars_receipt_key(charge_id: str) -> str:
    """Set when the receipt of a Stars payment went out (sent once per payment)."""
    return f"{STARS_RECEIPT_PREFIX}{charge_id}"


# --- WeChat (adapters/wechat) -------------------------------------------------------------------


def wx_token_key(appid: str) -> str:
    """The official account's access_token, shared by every process."""
    return f"wx:token:{appid}"


def wx_lock_key(name: str) -> str:
    """A named lock over the store (`KvLocks`; value: its holder's token; short ttl)."""
    return f"wx:lock:{name}"


def wx_token_lock(appid: str) -> str:
    """The lock's name for refreshing the access_token (one process at a time)."""
    return f"token:{appid}"


def wx_user_lock(openid: str) -> str:
    """The lock's name for one user's outbox and busy marks."""
    return f"user:{openid}"


def wx_outbox_key(openid: str) -> str:
    """A user's undelivered items (JSON list), sent after their next message or per "1"."""
    return f"wx:outbox:{openid}"


def wx_busy_set(openid: str) -> str:
    """Set of a user's requests whose work outlived the request ("key|deadline")."""
    return f"wx:busy:{openid}"


def wx_answer_key(request: str) -> str:
    """The item that answers one WeChat request (passive mode), shared by WeChat's retries."""
    return f"wx:ans:{request}"


def wx_image_actions_key(openid: str) -> str:
    """The actions (JSON: label, data) of the user's latest image, for "U1" and the like."""
    return f"wx:img:{openid}"


def wx_seen_key(request: str) -> str:
    """A handled WeChat message or event (dedupe of WeChat's retries)."""
    return f"wx:seen:{request}"


def wx_tries_key(request: str) -> str:
    """How many of WeChat's tries of one request arrived (passive mode)."""
    return f"wx:tries:{request}"


# --- WeChat Pay (bot/payments/wechatpay.py, through bot/payments/inbox.py) ---------------------

WXPAY_OPEN = "wxpay:open"
"""Set of the out_trade_no of WeChat Pay orders not settled yet (reconciled periodically)."""
WXPAY_ORDER_PREFIX = "wxpay:order:"
WXPAY_PAID_PREFIX = "wxpay:paid:"
WXPAY_NOT_FOUND_PREFIX = "wxpay:notfound:"


def wxpay_order_key(out_trade_no: str) -> str:
    """A WeChat Pay order (JSON)."""
    return f"{WXPAY_ORDER_PREFIX}{out_trade_no}"


def wxpay_paid_key(out_trade_no: str) -> str:
    """Set once an order's payment is credited (JSON: transaction id, time)."""
    return f"{WXPAY_PAID_PREFIX}{out_trade_no}"


def wxpay_not_found_key(out_trade_no: str) -> str:
    """When WeChat Pay first said, in an unbroken run of answers, it has no such order."""
    return f"{WXPAY_NOT_FOUND_PREFIX}{out_trade_no}"
