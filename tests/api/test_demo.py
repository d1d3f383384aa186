"""The browser demo (api/demo): served publicly at `/`, and driven in headless Chromium.

The browser tests use Debian's Chromium (`apt-get install chromium`), never a downloaded one.
`VOXLINE_UPDATE_SCREENSHOT=1` copies the screenshot of the speaking test to docs/demo.png.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import os
import re
import shutil
import struct
import tomllib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.conftest import CI
from tests.harness import start_pipeline
from voxline.api import demo
from voxline.api.auth import hash_key

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("VOXLINE_CHROMIUM", "/usr/bin/chromium"))
# Headless as root in a closed network: without the background-networking flags Chromium's
# own connections (updates, sync) are refused and clutter its log.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
VIEWPORT = {"width": 1200, "height": 800}
SCREENSHOT = ROOT / "docs" / "demo.png"
KEY = "vx_demo-test-key-0123456789"
WAIT_MS = 20_000

# Real speech (espeak): three sentences, so three rows with latencies.
SPEECH = (
    "Hello from voxline. Every sentence streams to the browser as it is made. "
    "The next one is synthesized while this one plays."
)
# The tone engine (60 ms a character) at 4x real time: some ten seconds of audio that arrive
# over three, so at barge-in the server is still generating and the page holds a second or more
# of scheduled audio that must stop at once.
LONG = (
    "This first sentence keeps the tone going for a while. "
    "A second sentence follows it right away. "
    "Then a third one that nobody should ever hear. "
    "And a fourth, just to be sure."
)


def _chromium_or_skip() -> None:
    if CHROMIUM.exists():
        return
    message = f"no Chromium at {CHROMIUM}: apt-get install chromium (no browser is downloaded)"
    if CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@contextlib.asynccontextmanager
async def open_demo(url: str, route_ws: Callable[[Any], None] | None = None) -> AsyncIterator[Any]:
    """The demo page in a fresh headless Chromium; fails on any uncaught page error.
    `route_ws` plays the server for the page's WebSocket instead of the real one."""
    _chromium_or_skip()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(WAIT_MS)
            page_errors: list[str] = []
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            if route_ws is not None:
                await page.route_web_socket(re.compile(r"^wss?://"), route_ws)
            await page.goto(url)
            yield page
            assert not page_errors, page_errors
        finally:
            await browser.close()


async def until(page: Any, condition: str, timeout: float = WAIT_MS) -> None:
    """Wait for a JS expression over `demo` (window.voxlineDemo) to hold."""
    await page.wait_for_function(
        f"() => {{ const demo = window.voxlineDemo; return !!demo && ({condition}); }}",
        timeout=timeout,
    )


async def stats(page: Any) -> dict[str, Any]:
    return await page.evaluate("() => ({...window.voxlineDemo.stats})")


async def received(page: Any, kind: str) -> list[dict[str, Any]]:
    return await page.evaluate(
        "(kind) => window.voxlineDemo.log.filter((m) => m.type === kind)", kind
    )


async def sentence_rows(page: Any) -> list[list[str]]:
    """The cells of the per-sentence table, newest first (notes left out)."""
    return await page.eval_on_selector_all(
        "#rows tr:not(:has(td.note))",
        "(rows) => rows.map((tr) => [...tr.cells].map((td) => td.textContent))",
    )


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


async def _voice_picker_lists(page: Any, http: str) -> None:
    """A picker of the voices of GET /v1/voices where it answers, else a free-text field."""
    async with httpx.AsyncClient(base_url=http) as client:
        response = await client.get("/v1/voices")
    if response.status_code != 200:
        await until(page, "demo.state.voicesLoaded")
        assert await page.is_visible("#voice-text")
        return
    expected = {voice["id"] for voice in response.json()["voices"]}
    await until(page, "demo.state.voicesLoaded")
    assert await page.is_visible("#voice-select")
    options = await page.eval_on_selector_all(
        "#voice-select option", "(options) => options.map((o) => o.value)"
    )
    assert options[0] == "" and set(options[1:]) == expected


async def _choose_voice(page: Any, voice: str) -> None:
    await until(page, "demo.state.voicesLoaded")
    if await page.is_visible("#voice-select"):
        await page.select_option("#voice-select", voice)
    else:
        await page.fill("#voice-text", voice)
        await page.dispatch_event("#voice-text", "change")


# --- served, and public --------------------------------------------------------------------


def test_every_asset_is_package_data() -> None:
    """A non-editable install ships only what pyproject's package-data names."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["voxline.api.demo"]
    for name in demo.ASSETS:
        assert (ROOT / "voxline" / "api" / "demo" / name).is_file(), name
        assert any(fnmatch.fnmatch(name, p) for p in patterns), f"{name} is not package data"


async def test_page_and_assets_are_public_but_the_websocket_needs_the_key(
    redis_url: str, key_prefix: str
) -> None:
    async with start_pipeline(redis_url, key_prefix, api_keys=hash_key(KEY)) as p:
        async with httpx.AsyncClient(base_url=p.http) as http:
            page = await http.get("/")
            assert page.status_code == 200
            assert page.headers["content-type"] == "text/html; charset=utf-8"
            assert page.headers["cache-control"] == "no-cache"
            linked = re.findall(r'(?:src|href)="(/demo/[^"]+)"', page.text)
            assert sorted(linked) == ["/demo/app.js", "/demo/style.css"]
            for path, media_type in (
                ("/demo/app.js", "text/javascript"),
                ("/demo/style.css", "text/css"),
            ):
                asset = await http.get(path)
                assert asset.status_code == 200 and asset.content, path
                assert asset.headers["content-type"] == f"{media_type}; charset=utf-8"
                assert asset.headers["cache-control"] == "no-cache"
            assert (await http.get("/demo/__init__.py")).status_code == 404
            # Only the demo became public.
            assert (await http.get("/openapi.json")).status_code == 401
            schema = await http.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"})
            assert "/" not in schema.json()["paths"]

        async with websockets.connect(p.ws_url) as ws:
            refused = json.loads(await ws.recv())
            assert refused["type"] == "error" and refused["code"] == "unauthorized"
        async with websockets.connect(p.ws_url, subprotocols=["voxline.v1", "token", KEY]) as ws:
            await ws.send(json.dumps({"type": "session.config", "response_format": "pcm"}))
            assert json.loads(await ws.recv())["type"] == "session.ready"


# --- in the browser ------------------------------------------------------------------------


@pytest.mark.parametrize("redis_url", ["memory"], indirect=True)
async def test_the_page_speaks_and_shows_latencies(
    redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    async with (
        start_pipeline(redis_url, key_prefix, engine="espeak") as p,
        open_demo(p.http + "/") as page,
    ):
        await until(page, "demo.state.connected")
        await _voice_picker_lists(page, p.http)
        await page.fill("#text", SPEECH)
        await page.click("#speak")
        await until(page, "demo.stats.sentencesDone >= 3 && demo.stats.scheduledChunks > 0")

        # Every byte of every sentence went onto the audio clock, in order.
        done = await received(page, "audio.done")
        ready = (await received(page, "session.ready"))[-1]
        assert [m["sentence_index"] for m in done] == [0, 1, 2]
        seen = await stats(page)
        samples = sum(m["total_bytes"] for m in done) // 2
        assert round(seen["scheduledSeconds"] * ready["sample_rate"]) == samples
        assert seen["lastError"] is None

        # Both latencies on every row: the page's own and the server's first_byte_ms.
        rows = await sentence_rows(page)
        assert [row[0] for row in rows] == ["0.2", "0.1", "0.0"]
        for index, text, client, server, _, status in rows:
            assert text and status == "done", (index, text, status)
            assert re.fullmatch(r"\d+ ms", client) and re.fullmatch(r"\d+ ms", server), rows

        # The audio graph plays: the waveform moves, and sources end as the audio clock runs.
        await until(page, "demo.state.level > 0.15 && demo.stats.playing > 0")
        shot = tmp_path / "demo.png"
        await page.screenshot(path=str(shot))
        assert png_size(shot.read_bytes()) == (VIEWPORT["width"], VIEWPORT["height"])
        playing = (await stats(page))["playing"]
        await until(page, f"demo.stats.playing <= {playing - 5}")
        assert (await page.evaluate("() => window.voxlineDemo.state.currentTime")) > 0
    if os.environ.get("VOXLINE_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, SCREENSHOT)


@pytest.mark.parametrize("redis_url", ["memory"], indirect=True)
async def test_barge_in_stops_playback_and_the_server(redis_url: str, key_prefix: str) -> None:
    async with (
        start_pipeline(
            redis_url,
            key_prefix,
            engine="tone",
            engine_options={"rtf": "0.25"},
            api_keys=hash_key(KEY),
        ) as p,
        open_demo(p.http + "/") as page,
    ):
        # The page is public; its WebSocket is refused until it sends the key.
        await until(page, "demo.stats.lastError && demo.stats.lastError.code === 'unauthorized'")
        await page.fill("#api-key", KEY)
        await page.click("#connect")
        await until(page, "demo.state.connected")
        await _choose_voice(page, "tone-low")  # sent as a new session.config before speaking

        await page.fill("#text", LONG)
        await page.click("#simulate")
        await until(page, "demo.state.nextTime - demo.state.currentTime > 1.2")
        await page.click("#barge-in")
        await until(page, "demo.stats.playing === 0", timeout=600)
        await until(page, "demo.stats.cancelled >= 1")
        cancelled = await received(page, "input.cancelled")
        assert len(cancelled) == 1 and cancelled[0]["cancelled_sentences"], cancelled
        assert (await received(page, "session.ready"))[-1]["voice"] == "tone-low"

        # Nothing more is scheduled: neither late frames nor the rest of the simulated stream.
        before = await stats(page)
        await asyncio.sleep(1.0)
        after = await stats(page)
        assert after["scheduledSeconds"] == before["scheduledSeconds"]
        assert after["scheduledChunks"] == before["scheduledChunks"]
        assert after["playing"] == 0
        assert before["scheduledSeconds"] < 6, "barge-in came after most of the audio"
        assert p.workers[0].engine.stats["cancelled"] >= 1  # the server stopped generating

        # The connection goes on: the next utterance plays.
        await page.fill("#text", "Again.")
        await page.click("#speak")
        await until(page, "demo.log.some((m) => m.type === 'session.done')")
        again = await stats(page)
        assert again["sentencesDone"] == 1 and again["scheduledChunks"] > after["scheduledChunks"]


# --- the page's own logic, against a scripted server ---------------------------------------


class ScriptedServer:
    """Plays the server's part of the protocol for the page (playwright routes its WebSocket
    here): audio in frames of odd lengths, and a frame still in flight when a cancel arrives."""

    RATE = 24000
    FRAMES = (4801, 4799, 4800)  # 7200 samples in all; the odd byte crosses a frame boundary

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []

    def attach(self, ws: Any) -> None:
        ws.on_message(lambda message: self.on_message(ws, message))

    def on_message(self, ws: Any, message: str | bytes) -> None:
        msg = json.loads(message)
        self.received.append(msg)
        start = {"type": "audio.start", "utterance_index": 0, "format": "pcm"}
        start |= {"sample_rate": self.RATE}
        if msg["type"] == "session.config":
            ws.send(
                json.dumps(
                    {
                        "type": "session.ready",
                        "session_id": "scripted",
                        "format": "pcm",
                        "sample_rate": self.RATE,
                        "voice": "v",
                        "engine": "scripted",
                    }
                )
            )
        elif msg["type"] == "input.text":
            ws.send(json.dumps(start | {"sentence_index": 0, "sentence_text": msg["text"]}))
            for size in self.FRAMES:
                ws.send(bytes(size))
        elif msg["type"] == "input.cancel":
            # Sentence 1 started before the server saw the cancel: its frame is already sent.
            ws.send(json.dumps(start | {"sentence_index": 1, "sentence_text": "Late."}))
            ws.send(bytes(4800))
            ws.send(
                json.dumps(
                    {"type": "input.cancelled", "utterance_index": 0, "cancelled_sentences": [0, 1]}
                )
            )


@pytest.mark.parametrize("redis_url", ["memory"], indirect=True)
async def test_odd_frames_and_frames_in_flight_at_barge_in(redis_url: str, key_prefix: str) -> None:
    server = ScriptedServer()
    async with (
        start_pipeline(redis_url, key_prefix) as p,
        open_demo(p.http + "/", route_ws=server.attach) as page,
    ):
        await until(page, "demo.state.connected")
        config = server.received[0]
        assert config["response_format"] == "pcm" and config["stream_audio"] is True
        await page.fill("#text", "Hello.")
        await page.click("#speak")
        await until(page, "demo.stats.scheduledChunks === 3")
        seen = await stats(page)
        assert round(seen["scheduledSeconds"] * ScriptedServer.RATE) == 7200  # every sample
        assert [m["type"] for m in server.received[1:]] == ["input.text", "input.done"]

        await page.click("#barge-in")
        await until(page, "demo.stats.cancelled === 1")
        seen = await stats(page)
        assert seen["scheduledChunks"] == 3, "a frame of a cancelled sentence was scheduled"
        await until(page, "demo.stats.playing === 0", timeout=600)  # after the short fade-out
        rows = await sentence_rows(page)
        assert [(row[0], row[-1]) for row in rows] == [("0.1", "cancelled"), ("0.0", "cancelled")]
