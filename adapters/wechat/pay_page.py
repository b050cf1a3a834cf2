"""What a WeChat user sees to pay: the JSAPI pay page (WeixinJSBridge) and the QR code PNG.

The page opens WeChat Pay inside WeChat for a JSAPI order, in Chinese and English; the QR code
is a Native order's code_url, to scan (or long-press inside WeChat). Both are pure rendering:
the order and its signed parameters come from the core's WeChat Pay service.
"""

from __future__ import annotations

import html
import io
import json
from datetime import UTC, datetime

from billing.money import format_credits, format_fen
from bot.payments.wechatpay import Order, WeChatPay


def qr_png(text: str) -> bytes:
    """A PNG of the QR code the user scans to pay (pure Python: qrcode + pypng)."""
    import qrcode
    from qrcode.image.pure import PyPNGImage

    img = qrcode.make(text, image_factory=PyPNGImage, box_size=8, border=2)
    out = io.BytesIO()
    img.save(out)
    return out.getvalue()


_PAGE = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>充值 Top up</title></head>
<body style="font-family:sans-serif;text-align:center;padding:2em">
<h2>¥{cny}</h2><p>{credits} 积分 / credits</p>
<p id="state">{state}</p>
{button}
<script>
var params = {params};
function pay() {{
  if (!params || typeof WeixinJSBridge === "undefined") {{
    document.getElementById("state").textContent =
      "请在微信中打开此页面 / Please open this page in WeChat";
    return;
  }}
  WeixinJSBridge.invoke("getBrandWCPayRequest", params, function (res) {{
    document.getElementById("state").textContent =
      res.err_msg === "get_brand_wcpay_request:ok"
        ? "支付成功，积分即将到账 / Paid: your credits are on their way"
        : "未完成支付 / Payment not completed";
  }});
}}
if (params) {{
  if (typeof WeixinJSBridge === "undefined") {{
    document.addEventListener("WeixinJSBridgeReady", pay, false);
  }} else {{ pay(); }}
}}
</script></body></html>
"""


def jsapi_page(pay: WeChatPay, order: Order) -> str:
    """The page a WeChat user opens to pay a JSAPI order (WeixinJSBridge), in zh and en."""
    if order.status == "paid":
        state, params = "已支付 / Already paid", None
    elif order.status == "expired" or datetime.fromisoformat(order.expires_at) <= datetime.now(UTC):
        state, params = "订单已过期 / This order has expired", None
    else:
        state, params = "正在打开微信支付… / Opening WeChat Pay…", pay.jsapi_params(order)
    button = '<p><button onclick="pay()">支付 Pay</button></p>' if params else ""
    data = json.dumps(params).replace("<", "\\u003c")  # nothing can close the script
    return _PAGE.format(
        cny=format_fen(order.fen),
        credits=format_credits(order.amount_milli),
        state=html.escape(state),
        button=button,
        params=data,
    )
