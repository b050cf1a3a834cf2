"""The midjourney-proxy client in both dialects, against the simulator and a scripted fake."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from aiohttp import web

from bot.providers.errors import UpstreamError, UpstreamUnavailable
from bot.providers.midjourney import (
    ACTIONS,
    FAILURE,
    IN_PROGRESS,
    SUCCESS,
    MidjourneyClient,
    MjTask,
    TaskNotFound,
)
from fakes.midjourney import fake_midjourney
from fakes.server import serve
from simulator import Simulator, start_simulator


async def until_done(mj: MidjourneyClient, task_id: str, seconds: float = 5.0) -> MjTask:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        task = await mj.fetch(task_id)
        if task.done or asyncio.get_running_loop().time() > deadline:
            return task
        await asyncio.sleep(0.03)


@pytest.fixture(params=["novicezk", "trueai"])
async def mj(request, sim: Simulator):
    async with MidjourneyClient(sim.mj_url, "", dialect=request.param) as client:
        yield client


async def test_imagine_runs_to_success_with_an_image_and_buttons(mj, sim):
    submitted = await mj.submit_imagine("a red fox in snow")
    assert submitted.code == 1 and submitted.accepted and submitted.task_id
    first = await mj.fetch(submitted.task_id)
    assert first.status in ("SUBMITTED", IN_PROGRESS) and not first.done
    task = await until_done(mj, submitted.task_id)
    assert task.status == SUCCESS and task.progress == "100%"
    assert task.action == "IMAGINE" and task.prompt == "a red fox in snow"
    assert task.actions() == list(ACTIONS)
    async with httpx.AsyncClient() as h:
        image = await h.get(task.image_url)
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize(
    "action,expected", [("U2", "UPSCALE"), ("V3", "VARIATION"), ("REROLL", "REROLL")]
)
async def test_actions_start_new_tasks(mj, action, expected):
    parent = await until_done(mj, (await mj.submit_imagine("a lighthouse")).task_id)
    child = await mj.submit_action(parent, action)
    assert child.code == 1 and child.task_id != parent.id
    task = await until_done(mj, child.task_id)
    assert task.status == SUCCESS and task.action == expected
    if expected == "UPSCALE":
        assert task.actions() == []  # an upscaled image is not sold further


async def test_the_same_upscale_twice_is_code_21_with_the_first_task_id(mj):
    parent = await until_done(mj, (await mj.submit_imagine("twice")).task_id)
    first = await mj.submit_action(parent, "U1")
    second = await mj.submit_action(parent, "U1")
    assert first.code == 1
    assert second.code == 21 and second.existing and second.accepted
    assert second.task_id == first.task_id


async def test_dialects_use_their_own_endpoints(sim):
    async with MidjourneyClient(sim.mj_url + "/mj", dialect="novicezk") as novicezk:
        parent = await until_done(novicezk, (await novicezk.submit_imagine("x")).task_id)
        await novicezk.submit_action(parent, "V1")
    async with MidjourneyClient(sim.mj_url, dialect="trueai") as trueai:
        await trueai.submit_action(parent, "U4")
    assert sim.stats["POST /mj/submit/change"] == 1
    assert sim.stats["POST /mj/submit/action"] == 1
    change = next(b for p, b in sim.requests if p == "/mj/submit/change")
    action = next(b for p, b in sim.requests if p == "/mj/submit/action")
    assert change == {"taskId": parent.id, "action": "VARIATION", "index": 1}
    assert action == {"taskId": parent.id, "customId": parent.custom_id("U4")}
    assert action["customId"].startswith("MJ::JOB::upsample::4::")


async def test_fault_fail_ends_in_failure_with_a_reason(mj):
    submitted = await mj.submit_imagine("cat [[fault:fail]]")
    task = await until_done(mj, submitted.task_id)
    assert task.status == FAILURE and task.fail_reason
    assert task.actions() == []


async def test_fault_slow_never_finishes(mj):
    submitted = await mj.submit_imagine("cat [[fault:slow]]")
    await asyncio.sleep(0.4)
    task = await mj.fetch(submitted.task_id)
    assert task.status == IN_PROGRESS and not task.done


@pytest.mark.parametrize(
    "fault,code,accepted", [("queue_full", 23, False), ("banned", 24, False), ("queued", 22, True)]
)
async def test_refusal_and_queue_codes(mj, fault, code, accepted):
    result = await mj.submit_imagine(f"cat [[fault:{fault}]]")
    assert result.code == code and result.accepted is accepted
    assert result.description
    if accepted:
        assert (await until_done(mj, result.task_id)).status == SUCCESS


async def test_fault_exists_returns_the_existing_task(mj):
    first = await mj.submit_imagine("dog [[fault:exists]]")
    second = await mj.submit_imagine("dog [[fault:exists]]")
    assert first.code == second.code == 21
    assert first.task_id == second.task_id


async def test_armed_fault_applies_to_the_next_submit_only(mj, sim):
    sim.arm("banned", target="mj")
    assert (await mj.submit_imagine("first")).code == 24
    assert (await mj.submit_imagine("second")).code == 1


async def test_action_on_an_unfinished_task_is_refused(mj):
    submitted = await mj.submit_imagine("slow one [[fault:slow]]")
    task = await mj.fetch(submitted.task_id)
    result = await mj.submit_action(task, "U1")
    assert not result.accepted


async def test_unknown_task_is_not_found(mj):
    with pytest.raises(TaskNotFound):
        await mj.fetch("404404404")


async def test_secret_is_required_and_sent():
    sim = await start_simulator(mj_secret="s3cret")
    try:
        async with MidjourneyClient(sim.mj_url, "wrong") as bad:
            with pytest.raises(UpstreamError) as err:
                await bad.submit_imagine("x")
            assert err.value.kind == "auth"
        async with MidjourneyClient(sim.mj_url, "s3cret") as good:
            result = await good.submit_imagine("x")
            assert result.code == 1
            assert (await good.fetch(result.task_id)).id == result.task_id
    finally:
        await sim.close()


async def test_notify_hook_receives_status_changes(sim):
    received: list[dict] = []
    finished = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        payload = await request.json()
        received.append(payload)
        if payload["status"] == SUCCESS:
            finished.set()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    async with serve(app) as url, MidjourneyClient(sim.mj_url) as mj:
        result = await mj.submit_imagine("hooked", notify_hook=url + "/hook")
        await asyncio.wait_for(finished.wait(), 5)
    assert {p["id"] for p in received} == {result.task_id}
    assert received[-1]["status"] == SUCCESS and received[-1]["imageUrl"]


async def test_list_tasks(sim):
    async with MidjourneyClient(sim.mj_url) as mj:
        a = (await mj.submit_imagine("a")).task_id
        b = (await mj.submit_imagine("b")).task_id
        tasks = await mj.list_tasks([a, b, "missing"])
    assert sorted(t.id for t in tasks) == sorted([a, b])


# --- shapes real proxies send ---------------------------------------------------------


TRUEAI_TASK = {
    "id": 1320098173412546,
    "action": "imagine",
    "status": "SUCCESS",
    "progress": "100%",
    "prompt": None,
    "promptEn": "Cat",
    "imageUrl": "https://cdn.example/x.png",
    "failReason": None,
    "properties": {"discordInstanceId": "1118138338562560102", "finalPrompt": "Cat"},
    "buttons": [
        {
            "customId": "MJ::JOB::upsample::1::abc",
            "emoji": "",
            "label": "U1",
            "type": 2,
            "style": 2,
        },
        {"customId": "MJ::JOB::reroll::0::abc::SOLO", "emoji": "🔄", "label": "", "type": 2},
        {"customId": "MJ::JOB::variation::2::abc", "emoji": "", "label": "V2", "type": 2},
        {"customId": "MJ::Outpaint::50::1::abc::SOLO", "label": "Zoom Out 2x", "type": 2},
    ],
}


async def test_tolerates_numeric_ids_string_codes_and_extra_fields():
    answers = {
        "POST /mj/submit/imagine": [
            (
                200,
                {
                    "code": "1",
                    "description": "ok",
                    "result": 1320098173412546,
                    "properties": {"discordInstanceId": "111"},
                },
            ),
        ],
        "GET /mj/task/fetch": [(200, TRUEAI_TASK)],
        "POST /mj/submit/action": [(200, {"code": 22, "description": "queued", "result": "77"})],
    }
    async with fake_midjourney(answers) as fake:
        async with MidjourneyClient(fake.url, "topsecret", dialect="trueai") as mj:
            submitted = await mj.submit_imagine("Cat")
            task = await mj.fetch(submitted.task_id)
            queued = await mj.submit_action(task, "V2")
            zoom_missing = await mj.submit_action(task, "U3")
    assert submitted.code == 1 and submitted.task_id == "1320098173412546"
    assert submitted.properties["discordInstanceId"] == "111"
    assert task.id == "1320098173412546" and task.action == "IMAGINE" and task.prompt == "Cat"
    assert task.actions() == ["U1", "V2", "REROLL"]
    assert queued.code == 22 and queued.accepted and queued.task_id == "77"
    assert not zoom_missing.accepted  # U3 is not among the buttons: refused without a request
    assert [s[1] for s in fake.seen].count("/mj/submit/action") == 1
    assert all(s[2].get("mj-api-secret") == "topsecret" for s in fake.seen)
    assert fake.seen[-1][3] == {
        "taskId": "1320098173412546",
        "customId": "MJ::JOB::variation::2::abc",
    }


async def test_trueai_statuses_and_null_progress():
    modal = dict(TRUEAI_TASK, status="MODAL", progress=None, buttons=None)
    cancel = dict(TRUEAI_TASK, status="CANCEL", failReason="cancelled by user")
    answers = {"GET /mj/task/fetch": [(200, modal), (200, cancel)]}
    async with fake_midjourney(answers) as fake, MidjourneyClient(fake.url) as mj:
        first = await mj.fetch("1")
        second = await mj.fetch("1")
    assert (
        first.status == "MODAL" and not first.done and first.progress == "" and first.buttons == []
    )
    assert second.status == "CANCEL" and second.done and not second.succeeded


async def test_empty_fetch_body_is_not_found_and_5xx_is_unavailable():
    answers = {
        "GET /mj/task/fetch": [(200, None)],
        "POST /mj/submit/imagine": [(502, None)],
    }
    async with fake_midjourney(answers) as fake, MidjourneyClient(fake.url) as mj:
        with pytest.raises(TaskNotFound):
            await mj.fetch("1")
        with pytest.raises(UpstreamUnavailable):
            await mj.submit_imagine("x")
    assert len(fake.seen) == 2  # a failed submit is never retried (it could bill twice)


async def test_other_codes_are_refusals_with_the_proxys_description():
    answers = {
        "POST /mj/submit/imagine": [(200, {"code": 9, "description": "no account available"})]
    }
    async with fake_midjourney(answers) as fake, MidjourneyClient(fake.url) as mj:
        result = await mj.submit_imagine("x")
    assert result.code == 9 and not result.accepted and result.task_id is None
    assert result.description == "no account available"
