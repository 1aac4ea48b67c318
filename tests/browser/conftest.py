"""The whole system for a real browser: uvicorn serving the app, a real local Celery worker, a
tiny VLM and a synthetic SO-100 dataset, and Debian's headless Chromium driven by Playwright.

Screenshots go to test-artifacts/screenshots/; with FEDVLA_UPDATE_SCREENSHOTS=1 they also
replace docs/screenshots/ (the README's).
"""

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from fedvla.core.config import Settings
from fedvla.core.db import make_engine
from fedvla.core.models import Role
from fedvla.core.services import tokens as token_service
from tests.conftest import IN_CI
from tests.orchestration.conftest import FAST, LiveServer, WorkerProcess

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
]  # fmt: skip
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "screenshots"
DOCS_SCREENSHOTS = REPO / "docs" / "screenshots"


@dataclass
class System:
    url: str
    settings: Settings
    engine: Engine
    worker: WorkerProcess
    dataset_root: Path
    admin: str
    viewer: str


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[System]:
    from fedvla.engine.data.synthetic import SyntheticSpec, generate_dataset
    from fedvla.engine.policy.tiny import tiny_vlm_dir

    root = tmp_path_factory.mktemp("dashboard")
    data_dir = root / "data"
    tiny_vlm_dir(data_dir)
    dataset_root = generate_dataset(
        root / "synthetic", SyntheticSpec(episodes=5, frames_per_episode=16)
    )
    database = root / "fedvla.db"
    shutil.copy(sqlite_template, database)
    settings = Settings(
        environment="test",
        data_dir=data_dir,
        database_url=f"sqlite:///{database}",
        broker_url=f"sqla+sqlite:///{root / 'broker.db'}",
        redis_url="",
        gpu_queue=f"gpu-{uuid.uuid4().hex[:8]}",
        superlink_public_address="fleet.lab.example:9092",  # what startup kits dial
        **FAST,
    )
    engine = make_engine(settings.database_url)
    worker = WorkerProcess(settings, engine, root).start()
    with Session(engine) as session:
        _, admin = token_service.create_token(session=session, name="admin", role=Role.admin)
        _, viewer = token_service.create_token(session=session, name="viewer", role=Role.viewer)
    try:
        with LiveServer(settings) as server:
            yield System(server.url, settings, engine, worker, dataset_root, admin, viewer)
    finally:
        worker.stop()
        engine.dispose()


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} missing: apt-get install chromium"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def new_page(chromium: object, system: System) -> Iterator[Callable[..., object]]:
    """new_page(width=1280) -> a page in a fresh browser context (its own cookies)."""
    contexts = []

    def make(width: int = 1280, height: int = 900) -> object:
        context = chromium.new_context(  # type: ignore[attr-defined]
            base_url=system.url, viewport={"width": width, "height": height}, accept_downloads=True
        )
        context.set_default_timeout(30_000)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


def screenshot(page: object, name: str, mask: list[object] | None = None) -> None:
    """A full-page screenshot as a test artifact (and for the README when asked); ``mask``
    covers elements such as a freshly shown secret."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True, mask=mask or [])  # type: ignore[attr-defined]
    if os.environ.get("FEDVLA_UPDATE_SCREENSHOTS") == "1":
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS_SCREENSHOTS / path.name)
