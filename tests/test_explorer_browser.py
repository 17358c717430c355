"""The explorer page in a real browser: Playwright (PyPI) driving Debian's chromium package
(never a downloaded browser; `.ci/run` installs the package when it is missing).

The page must show every node with its role, add a node that joins and drop one that crashes,
show a node's details on click, move the topic chart when messages flow, say when the bootstrap
peers are down, and stay usable with a thousand announcing identities. A screenshot is saved
under ``test-artifacts/`` (or ``$P2PNET_ARTIFACTS``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from explorer_net import Net, dead_bootstrap_network, eventually, flood_announcements

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(
    os.environ.get("P2PNET_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts")
)

if not os.path.exists(CHROMIUM):
    if os.environ.get("P2PNET_REQUIRE_BROWSER"):  # set by .ci/run: never skip in CI
        raise RuntimeError(f"{CHROMIUM} is missing: test.sh installs Debian's chromium package")
    pytest.skip(
        "Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True
    )

from playwright.async_api import BrowserContext, Page, async_playwright  # noqa: E402


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh user-data-dir
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            yield context
        finally:
            await context.close()


async def _open(context: BrowserContext, url: str) -> tuple[Page, list[str]]:
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    await page.goto(url)
    return page, errors


def _node(peer: object, role: str | None = None) -> str:
    sel = f'#nodes [data-peer-id="{peer}"]'
    return sel + (f'[data-role="{role}"]' if role else "")


async def test_page_shows_the_network_live(browser: BrowserContext) -> None:
    net = Net()
    try:
        await net.start(boots=2, agents=3)
        page, errors = await _open(browser, net.url)
        # every node, with the right role
        for peer, role in net.expected_roles().items():
            await page.wait_for_selector(_node(peer, role), timeout=15_000)
        await page.wait_for_selector("#stream-status.live", timeout=5_000)

        # clicking a node shows its details
        agent = net.agents[0]
        await page.click(_node(agent.peer_id) + " circle")
        details = page.locator(f'#details dl[data-details-of="{agent.peer_id}"]')
        await details.wait_for(timeout=5_000)
        text = await details.inner_text()
        assert "agent-0" in text and agent.eth_address.lower() in text.lower()
        assert "p2pnet/0.1.0" in text or "—" in text  # version once its status arrived

        # the topic chart moves when messages flow
        before = int(await page.get_attribute("#rates", "data-total") or 0)
        await eventually(lambda: all(a.pubsub.mesh_peers("agent-messages") for a in net.agents))
        for i in range(9):
            await net.agents[i % 3].broadcast({"n": i})
        await page.wait_for_function(
            f"document.querySelector('#rates polyline[data-topic=\"agent-messages\"]') && "
            f"+document.querySelector('#rates polyline[data-topic=\"agent-messages\"]')"
            f".getAttribute('data-total') >= 9 && "
            f"+document.querySelector('#rates').getAttribute('data-total') > {before}",
            timeout=10_000,
        )

        # mesh links can be chosen per topic
        await page.select_option("#link-mode", "agent-messages")
        await page.wait_for_selector("#edges.mesh line", state="attached", timeout=5_000)
        await page.select_option("#link-mode", "")

        # the DHT view lists the crawled servers
        for boot in net.boots:
            await page.wait_for_selector(f'#dht tr[data-server="{boot.peer_id}"]', timeout=10_000)

        ARTIFACTS.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, tiny
        await page.screenshot(path=str(ARTIFACTS / "explorer.png"), full_page=True)

        # a node that joins later appears; one that crashes disappears
        late = await net.add_agent("late")
        await page.wait_for_selector(_node(late.peer_id, "agent"), timeout=10_000)
        crashed = net.agents[1]
        await net.crash(crashed)
        await page.wait_for_selector(_node(crashed.peer_id), state="detached", timeout=15_000)
        # only live graph nodes carry data-peer-id
        assert await page.locator(f'[data-peer-id="{crashed.peer_id}"]').count() == 0
        assert await page.locator(_node(late.peer_id)).count() == 1
        assert errors == []
    finally:
        await net.close()


async def test_page_says_when_bootstrap_peers_are_down(browser: BrowserContext) -> None:
    net, boot_up = await dead_bootstrap_network()
    try:
        page, errors = await _open(browser, net.url)
        banner = page.locator('#bootstrap-status[data-state="retrying"]')
        await banner.wait_for(state="visible", timeout=10_000)
        assert "unreachable" in await banner.inner_text()
        await boot_up()
        await page.locator('#bootstrap-status[data-state="connected"]').wait_for(
            state="hidden", timeout=15_000
        )
        for peer, role in net.expected_roles().items():
            await page.wait_for_selector(_node(peer, role), timeout=15_000)
        assert errors == []
    finally:
        await net.close()


async def test_page_stays_usable_with_a_thousand_announcing_identities(
    browser: BrowserContext,
) -> None:
    net = Net()
    try:
        # fakes announce once: keep them long enough to be drawn (the default ttl is 90 s)
        await net.start(boots=1, agents=2, max_nodes=1500, node_ttl=60.0)
        page, errors = await _open(browser, net.url)
        for peer, role in net.expected_roles().items():
            await page.wait_for_selector(_node(peer, role), timeout=15_000)
        await eventually(
            lambda: all(a.pubsub.mesh_peers("agent-announcements") for a in net.agents)
        )
        await flood_announcements(net.agents[0], 1000)
        await page.wait_for_function(
            "document.querySelectorAll('#nodes .node').length >= 1000", timeout=30_000
        )
        # still responsive: a click on a real node shows its details at once
        agent = net.agents[1]
        await page.click(_node(agent.peer_id) + " circle", timeout=10_000)
        await page.locator(f'#details dl[data-details-of="{agent.peer_id}"]').wait_for(
            timeout=5_000
        )
        assert await page.locator("#announcements li").count() <= 30
        assert errors == []
        await asyncio.sleep(0)
    finally:
        await net.close()
