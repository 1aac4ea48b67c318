"""The whole operator journey on loopback, as the README's operator guide tells it, through the
real `fedvla` command and the real REST API and site page of a real `fedvla serve`:

the coordinator runs `fedvla superlink` and `fedvla serve` (web app and local worker) and hands
out enrolment tokens; each operator runs `fedvla site keygen keys` in a folder of the site's own,
prints the registration body with `fedvla site check --dataset DIR` and posts it; the admin
approves; the operator downloads the startup kit, unzips it beside `keys/`, checks the dataset
against it and starts the node with the kit's own `supernode.sh`, unedited, on a bare PATH. A
run launched through the API trains on both sites; their contribution shows in the API and on
the site page; the run's federation.log holds the ServerApp's log. The admin revokes one site
mid-run: its node is unregistered within the SuperLink's sync interval and the run goes on with
the other site (the experiment's min_clients is 1). The revoked site makes a new key pair,
registers it, is approved again and trains in the next run, with the same SuperLink.

The outsider's probe (only the kit's CA: every Control and ServerAppIo route refused on the
public address) is tests/deployment/test_fleet_front.py's; here one request of it, with a
kit that was really downloaded.
"""

import io
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from bs4 import BeautifulSoup
from sqlmodel import Session

from fedvla.core.config import Settings
from fedvla.core.db import make_engine
from fedvla.core.services import run_files
from fedvla.orchestration.deployment.local_nodes import free_port
from fedvla.orchestration.site_node import read_task_records
from fedvla.orchestration.supervisor import child_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

FEDVLA = str(Path(sys.executable).parent / "fedvla")
BARE = {
    **{k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"},
    "PATH": "/usr/bin:/bin",
    "HF_HUB_OFFLINE": "1",
}
"""An operator's shell: fedvla is called by its path, as an installed command; nothing on PATH."""
FINAL = ("succeeded", "failed", "cancelled")
ROUNDS = 4
"""Run 1's: lab-b is revoked once round 1 is in, with rounds left for lab-a alone."""


def wait_for(what: str, condition: Callable[[], Any], timeout_s: float, every_s: float = 1) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s: {what}"
        time.sleep(every_s)
    return value


def _stop(process: "subprocess.Popen[bytes]", signum: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signum)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)


@dataclass
class Coordinator:
    settings: Settings
    root: Path
    api: httpx.Client
    url: str
    admin: dict[str, str]
    superlink: "subprocess.Popen[bytes]"
    processes: list["subprocess.Popen[bytes]"] = field(default_factory=list)

    def start(self, command: list[str], log: Path, **kwargs: Any) -> "subprocess.Popen[bytes]":
        with log.open("ab") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
            )
        self.processes.append(process)
        return process

    def ok(self, method: str, path: str, expected: int = 200, **kwargs: Any) -> Any:
        answer = self.api.request(method, path, **kwargs)
        assert answer.status_code == expected, (method, path, answer.text)
        return (
            answer.json()
            if answer.content and "json" in answer.headers["content-type"]
            else (answer)
        )


def _coordinator_cli(settings: Settings, *args: str) -> str:
    done = subprocess.run(
        [FEDVLA, *args], env=child_env(settings), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def coordinator(tmp_path: Path, sqlite_url: str) -> Iterator[Coordinator]:
    from fedvla.engine.policy.tiny import tiny_vlm_dir

    fleet_port, web_port = free_port(), free_port()
    settings = Settings(
        environment="test",
        data_dir=tmp_path / "server",
        database_url=sqlite_url,
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        redis_url="",
        gpu_queue=f"gpu-{uuid.uuid4().hex[:8]}",
        host="127.0.0.1",
        port=web_port,
        superlink_port=free_port(),
        fleet_port=fleet_port,
        superlink_public_address=f"127.0.0.1:{fleet_port}",  # the address the kits dial
        node_wait_s=300.0,
    )
    tiny_vlm_dir(settings.data_dir)  # the experiment's policy, on the server
    env = child_env(settings)
    logs = tmp_path / "logs"
    logs.mkdir()
    with (logs / "superlink.out").open("ab") as out:
        superlink = subprocess.Popen(
            [FEDVLA, "superlink", "--sync-every", "1"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{web_port}"
    api = httpx.Client(base_url=f"{url}/api/v1", timeout=60)
    secret = _coordinator_cli(settings, "token", "create", "admin", "--role", "admin").strip()
    admin = {"Authorization": f"Bearer {secret}"}
    world = Coordinator(settings, tmp_path, api, url, admin, superlink, [superlink])
    try:
        world.start([FEDVLA, "serve"], logs / "serve.out", env=env)
        wait_for(
            "the SuperLink and its front",
            lambda: (
                "SuperLink on" in (logs / "superlink.out").read_text()
                or superlink.poll() is not None
            ),
            180,
        )
        assert superlink.poll() is None, (logs / "superlink.out").read_text()

        def worker_online() -> bool:
            try:
                workers = api.get("/workers", headers=admin).json()
            except httpx.HTTPError:
                return False
            return any(w["online"] for w in workers["data"])

        wait_for("the local worker of fedvla serve", worker_online, 300)
        yield world
    finally:
        for process in reversed(world.processes):
            _stop(process)
        api.close()


@dataclass
class Operator:
    """One robot site: its folder (keys/ and, unzipped, fedvla-site/), its dataset, its token."""

    name: str
    folder: Path
    dataset: Path
    token: dict[str, str]
    site_id: int = 0
    node: "subprocess.Popen[bytes] | None" = None

    def fedvla(
        self, *args: str, token: dict[str, str] | None = None
    ) -> "subprocess.CompletedProcess[str]":
        """The command in the site's folder; with ``token``, as FEDVLA_TOKEN (README, step 5)."""
        env = dict(BARE)
        if token is not None:
            env["FEDVLA_TOKEN"] = token["Authorization"].removeprefix("Bearer ")
        return subprocess.run(
            [FEDVLA, *args], cwd=self.folder, env=env, capture_output=True, text=True, timeout=300
        )

    def start_node(self, coordinator: Coordinator) -> None:
        """`sh fedvla-site/supernode.sh`, as shipped; a port of its own on this shared host."""
        self.node = coordinator.start(
            ["sh", "fedvla-site/supernode.sh"],
            self.folder / f"node-{len(coordinator.processes)}.log",
            cwd=self.folder,
            env={**BARE, "FEDVLA_SUPERNODE_PORT": str(free_port())},
        )


def _node_state(coordinator: Coordinator, site: Operator) -> str:
    return str(coordinator.ok("GET", f"/sites/{site.site_id}/node", headers=site.token)["status"])


def _wait_online(coordinator: Coordinator, sites: list[Operator]) -> None:
    def online() -> bool:
        for site in sites:
            assert site.node is not None and site.node.poll() is None, site.name
        return all(_node_state(coordinator, site) == "online" for site in sites)

    wait_for("the sites' nodes online", online, 180)


def _run(coordinator: Coordinator, run_id: int) -> dict[str, Any]:
    return dict(coordinator.ok("GET", f"/runs/{run_id}", headers=coordinator.admin))


def _finished(coordinator: Coordinator, run_id: int, timeout_s: float) -> dict[str, Any]:
    run = wait_for(
        f"run {run_id} to end",
        lambda: (run := _run(coordinator, run_id))["status"] in FINAL and run,
        timeout_s,
        every_s=2,
    )
    return dict(run)


def _utc(stamp: str) -> datetime:
    """An API timestamp (SQLite gives it back without its zone, which is UTC)."""
    moment = datetime.fromisoformat(stamp)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _events(coordinator: Coordinator, run_id: int) -> list[str]:
    page = coordinator.ok("GET", f"/runs/{run_id}/events.json?limit=500", headers=coordinator.admin)
    return [e["message"] for e in page["data"]]


def _clients(coordinator: Coordinator, run_id: int) -> list[dict[str, Any]]:
    return list(coordinator.ok("GET", f"/runs/{run_id}/clients", headers=coordinator.admin)["data"])


def _site_page(coordinator: Coordinator, site: Operator) -> BeautifulSoup:
    """The site's page in the dashboard, signed in with the site's operator token."""
    with httpx.Client(base_url=coordinator.url, timeout=60) as browser:
        form = BeautifulSoup(browser.get("/signin").text, "html.parser")
        csrf = form.find("input", attrs={"name": "csrf_token"})
        assert csrf is not None
        secret = site.token["Authorization"].removeprefix("Bearer ")
        signed = browser.post(
            "/signin", data={"token": secret, "csrf_token": csrf["value"], "next": "/sites"}
        )
        assert signed.status_code == 303, signed.text
        page = browser.get(f"/sites/{site.site_id}")
        assert page.status_code == 200, page.text
        return BeautifulSoup(page.text, "html.parser")


def _federation_log(coordinator: Coordinator, run_id: int) -> str:
    engine = make_engine(coordinator.settings.database_url)
    try:
        with Session(engine) as session:
            folder = run_files.run_dir_of(session, coordinator.settings, run_id)
    finally:
        engine.dispose()
    return run_files.federation_log(folder).read_text()


def test_the_operator_journey_from_enrolment_to_a_re_keyed_site_admitted_again(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    from fedvla.engine.data.synthetic import SyntheticSpec, generate_dataset

    api, admin = coordinator, coordinator.admin

    # -- Enrolment: an operator token with no site for each lab (POST /tokens, as the README).
    sites = []
    for i, name in enumerate(("lab-a", "lab-b"), start=1):
        enrolment = api.ok(
            "POST",
            "/tokens",
            201,
            headers=admin,
            json={"name": f"{name}-operator", "role": "operator"},
        )
        folder = tmp_path / name
        folder.mkdir()
        dataset = generate_dataset(
            tmp_path / "robot-data" / name, SyntheticSpec(episodes=3, frames_per_episode=8, seed=i)
        )
        sites.append(
            Operator(name, folder, dataset, {"Authorization": f"Bearer {enrolment['token']}"})
        )
    lab_a, lab_b = sites

    # -- At each site: keygen, the registration body from the dataset, POST /sites.
    for site in sites:
        keygen = site.fedvla("site", "keygen", "keys")
        assert keygen.returncode == 0, keygen.stderr
        assert "PRIVATE" not in keygen.stdout and (site.folder / "keys" / "supernode.key").is_file()
        check = site.fedvla("site", "check", "--dataset", str(site.dataset), "--name", site.name)
        assert check.returncode == 0, check.stderr
        (site.folder / "body.json").write_text(check.stdout)
        body = json.loads(check.stdout)
        assert body["public_key"] == keygen.stdout
        registered = api.ok("POST", "/sites", 201, headers=site.token, json=body)
        assert registered["status"] == "pending"
        site.site_id = registered["id"]
        assert _node_state(api, site) == "not registered"

    # -- The coordinator approves, and makes the experiment of both sites.
    for site in sites:
        approved = api.ok(
            "POST",
            f"/sites/{site.site_id}/approve",
            headers=admin,
            json={"reason": "dataset and key checked"},
        )
        assert approved["status"] == "approved"
    experiment = api.ok(
        "POST",
        "/experiments",
        201,
        headers=admin,
        json={
            "name": "journey",
            "policy": "tiny",
            "mode": "deployment",
            "site_ids": [lab_a.site_id, lab_b.site_id],
            "min_clients": 1,  # a revoked site leaves the other to go on
            "num_rounds": ROUNDS,
            "local_steps": 2,
            "batch_size": 2,
            "eval_every": 0,
            "device": "cpu",
        },
    )

    # -- Kit: downloaded with the operator's token, unzipped beside keys/, checked, started.
    for site in sites:
        kit = api.ok("GET", f"/sites/{site.site_id}/startup-kit", headers=site.token)
        assert kit.headers["content-type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(kit.content)) as archive:
            archive.extractall(site.folder)
        check = site.fedvla(
            "site",
            "check",
            "--dataset",
            str(site.dataset),
            "--experiment-config",
            "fedvla-site/kit.json",
            token=site.token,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert "against the experiments as the server defines them now" in check.stdout
        assert "Against experiment 'journey'" in check.stdout
        assert "The dataset fits" in check.stdout
    # The outsider's probe, with a kit's CA only: the Control API is not on the public address.
    ca = str(lab_a.folder / "fedvla-site" / "ca.crt")
    with httpx.Client(verify=ssl.create_default_context(cafile=ca), timeout=30) as outsider:
        probe = outsider.post(
            f"https://{coordinator.settings.superlink_public_address}/v1/control/list-nodes"
        )
    assert probe.status_code == 404

    for site in sites:
        wait_for(
            f"{site.name}'s key registered by the SuperLink's sync",
            lambda s=site: _node_state(api, s) == "registered",  # type: ignore[misc]
            60,
        )
        site.start_node(api)
    _wait_online(api, sites)

    # -- Run 1, launched through the API; lab-b is revoked once its first round is in.
    run = api.ok("POST", f"/experiments/{experiment['id']}/runs", 202, headers=admin)
    first_round = wait_for(
        "run 1's first round",
        lambda: (
            [c for c in _clients(api, run["id"]) if c["round"] == 1]
            or _run(api, run["id"])["status"] in FINAL
        ),
        600,
        every_s=1,
    )
    assert first_round is not True, _events(api, run["id"])
    revoked = api.ok(
        "POST",
        f"/sites/{lab_b.site_id}/revoke",
        headers=admin,
        json={"reason": "left the consortium"},
    )
    revoked_at = datetime.now(UTC)
    assert revoked["status"] == "revoked"
    wait_for(
        "lab-b's node unregistered",
        lambda: _node_state(api, lab_b) == "not registered",
        60,
    )
    finished = _finished(api, run["id"], 900)
    events = _events(api, run["id"])
    assert finished["status"] == "succeeded", events

    clients = _clients(api, run["id"])
    assert len({(c["round"], c["client"]) for c in clients}) == len(clients)  # each once
    rounds = api.ok("GET", f"/runs/{run['id']}/rounds", headers=admin)["data"]
    assert [r["round"] for r in rounds] == list(range(ROUNDS + 1))
    by_round = {
        r: {c["client"]: c for c in clients if c["round"] == r} for r in range(1, ROUNDS + 1)
    }
    assert set(by_round[1]) == {"lab-a", "lab-b"} and all(c["ok"] for c in by_round[1].values())
    assert all(by_round[r]["lab-a"]["ok"] for r in by_round)
    # A round sampled after the revocation (its previous round recorded after the revoke
    # returned) has lab-a alone; lab-b's update of the round it was revoked in, if it came
    # after the revocation, counts it once, as failed, and is not averaged.
    recorded = {r["round"]: _utc(r["created_at"]) for r in rounds}
    sampled_after = [r for r in by_round if r > 1 and recorded[r - 1] > revoked_at]
    assert sampled_after, f"the run ended before the revocation at {revoked_at}: {rounds}"
    assert all(set(by_round[r]) == {"lab-a"} for r in sampled_after), by_round
    lab_b_ok = [by_round[r]["lab-b"]["ok"] for r in by_round if "lab-b" in by_round[r]]
    assert lab_b_ok in ([True] * len(lab_b_ok), [True] * (len(lab_b_ok) - 1) + [False])
    assert {c["client"]: c["site_id"] for c in clients} == {
        "lab-a": lab_a.site_id,
        "lab-b": lab_b.site_id,
    }
    first_clients = clients

    # Its contribution, in the API above and on the site page.
    page = _site_page(api, lab_a)
    table = page.find(id="contributions-table")
    assert table is not None, page.get_text()
    row = next(tr for tr in table.find_all("tr") if f"run {run['id']}" in tr.get_text())
    cells = [td.get_text(strip=True) for td in row.find_all("td")]
    assert cells[1] == str(ROUNDS)  # rounds
    assert int(cells[2]) == sum(c["samples"] for c in clients if c["client"] == "lab-a")

    # The run's federation.log: the worker's federation process and the ServerApp's log.
    log = _federation_log(api, run["id"])
    assert f"ServerApp of run {run['id']} on the SuperLink" in log
    assert f"[ROUND {ROUNDS}/{ROUNDS}]" in log

    # -- lab-b re-keys (its revoked key is never admitted again), registers it, is approved.
    assert lab_b.node is not None
    _stop(lab_b.node)
    keygen = lab_b.fedvla("site", "keygen", "--force", "keys")
    assert keygen.returncode == 0, keygen.stderr
    api.ok(
        "PATCH", f"/sites/{lab_b.site_id}", headers=lab_b.token, json={"public_key": keygen.stdout}
    )
    api.ok(
        "POST", f"/sites/{lab_b.site_id}/approve", headers=admin, json={"reason": "new key checked"}
    )
    wait_for(
        "lab-b's new key registered",
        lambda: _node_state(api, lab_b) == "registered",
        60,
    )
    lab_b.start_node(api)
    _wait_online(api, sites)

    # -- Run 2 of the same experiment, one round: lab-b trains again; same SuperLink.
    api.ok("PATCH", f"/experiments/{experiment['id']}", headers=admin, json={"num_rounds": 1})
    again = api.ok("POST", f"/experiments/{experiment['id']}/runs", 202, headers=admin)
    finished = _finished(api, again["id"], 600)
    assert finished["status"] == "succeeded", _events(api, again["id"])
    clients = _clients(api, again["id"])
    assert {(c["round"], c["client"], c["site_id"], c["ok"]) for c in clients} == {
        (1, "lab-a", lab_a.site_id, True),
        (1, "lab-b", lab_b.site_id, True),
    }
    assert coordinator.superlink.poll() is None  # never restarted
    # lab-b's page: both runs, the first with its one trained round and the failure, if any, of
    # the round it was revoked in.
    table = _site_page(api, lab_b).find(id="contributions-table")
    assert table is not None
    rows = {
        cells[0]: cells
        for tr in table.find_all("tr")
        if (cells := [td.get_text(strip=True) for td in tr.find_all("td")])
    }
    assert set(rows) == {f"run {run['id']}", f"run {again['id']}"}
    failed = sum(1 for c in first_clients if c["client"] == "lab-b" and not c["ok"])
    trained = sum(1 for c in first_clients if c["client"] == "lab-b" and c["ok"])
    assert (rows[f"run {run['id']}"][1], rows[f"run {run['id']}"][7]) == (str(trained), str(failed))
    assert rows[f"run {again['id']}"][1] == "1"

    # lab-a's node served both runs with one warm trainer (its own log).
    tasks = [
        t
        for log in sorted(lab_a.folder.glob("node-*.log"))
        for t in read_task_records(log.read_text())
    ]
    assert all(t["ok"] for t in tasks) and len({t["trainer_pid"] for t in tasks}) == 1
