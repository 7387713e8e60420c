"""`engage serve` as a real process: the demo's unsubscribe link, several workers,
clear start-up errors, clean shutdown."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email import policy
from email.parser import BytesParser
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import select

from engage.db import make_engine
from engage.db.models import Customer, Message, Suppression

from .installed import ENGAGE as INSTALLED_ENGAGE
from .test_cli import run
from .webtools import API_TOKEN

ENGAGE = [INSTALLED_ENGAGE]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGAGE_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(extra)
    return env


class Server:
    def __init__(self, url: str, proc: subprocess.Popen[str]) -> None:
        self.url = url
        self.proc = proc
        self.stderr = ""

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode


@contextmanager
def serving(args: list[str], cwd: Path, env: dict[str, str]) -> Iterator[Server]:
    """``engage ... serve --port P`` until it answers /healthz; SIGTERM at the end
    (the test checks the exit status and reads ``stderr`` afterwards)."""
    port = free_port()
    proc = subprocess.Popen(
        ENGAGE + args + ["--port", str(port)], cwd=cwd, env=clean_env(env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    server = Server(f"http://127.0.0.1:{port}", proc)
    deadline = time.monotonic() + 30
    try:
        while proc.poll() is None:
            try:
                if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("engage serve did not come up")
            time.sleep(0.1)
        else:
            raise AssertionError(f"engage serve exited {proc.returncode}")
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            _, server.stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, server.stderr = proc.communicate()


def test_the_demo_email_unsubscribe_link_posted_as_a_mail_client_would(tmp_path: Path) -> None:
    demo = run(["demo", "shop", "--customers", "80"], tmp_path)
    shop = tmp_path / "shop"
    assert "engage --config shop/config.yaml serve" in demo.stdout
    assert f"env $(cat {Path('shop') / '.env'})" in demo.stdout
    eml = sorted((shop / "outbox").glob("*.eml"))[0]
    msg = BytesParser(policy=policy.default).parsebytes(eml.read_bytes())
    link = re.fullmatch(r"<(.+)>", str(msg["List-Unsubscribe"])).group(1)  # type: ignore[union-attr]
    assert link in demo.stdout  # the demo shows a link to try
    post_body = str(msg["List-Unsubscribe-Post"])
    assert post_body == "List-Unsubscribe=One-Click"
    message_id = int(msg["X-Engage-Message-Id"])

    engine = make_engine(f"sqlite:///{shop / 'engage.db'}")
    with engine.connect() as conn:
        customer = conn.execute(
            select(Message.customer_id).where(Message.id == message_id)
        ).scalar_one()
        assert conn.execute(
            select(Customer.email_opt_in).where(Customer.id == customer)
        ).scalar_one()
    env = dict(line.split("=", 1) for line in (shop / ".env").read_text().splitlines())
    with serving(["--config", "shop/config.yaml", "serve"], tmp_path, env) as server:
        url = server.url
        path = urlsplit(link).path  # the demo's link is http://127.0.0.1:8080/u/...
        assert urlsplit(link).netloc == "127.0.0.1:8080"
        page = httpx.get(url + path, headers={"Accept": "text/html"})
        assert page.status_code == 200 and "Unsubscribe" in page.text
        with engine.connect() as conn:
            assert conn.execute(select(Suppression)).all() == []
        # RFC 8058: POST the List-Unsubscribe-Post value, no cookies, no auth
        r = httpx.post(url + path, content=post_body.encode(),
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 200 and r.json()["status"] == "unsubscribed"
    assert server.returncode == 0, server.stderr
    stderr = server.stderr
    assert "Traceback" not in stderr and "serve_endpoints" in stderr
    assert path[3:] not in stderr  # the token (a capability) is never logged
    with engine.connect() as conn:
        row = conn.execute(
            select(Suppression.customer_id, Suppression.reason, Suppression.message_id)
        ).one()
        assert tuple(row) == (customer, "unsubscribe", message_id)
        assert not conn.execute(
            select(Customer.email_opt_in).where(Customer.id == customer)
        ).scalar_one()
    engine.dispose()


def test_workers_share_metrics_and_stop_cleanly(tmp_path: Path, db_url: str) -> None:
    run(["init", "proj"], tmp_path)
    proj = tmp_path / "proj"
    env = {"ENGAGE_DATABASE_URL": db_url, "ENGAGE_API_TOKEN": API_TOKEN}
    run(["db", "upgrade"], proj, env)
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    with serving(["serve", "--workers", "2"], proj, env) as server:
        url = server.url
        for n in range(30):  # a new connection each: the kernel spreads them over the workers
            items = [{"id": f"c{n}-{i}"} for i in range(10)]
            r = httpx.post(f"{url}/v1/customers", json=items, headers=auth)
            assert r.status_code == 200 and r.json()["inserted"] == 10
        for _ in range(6):
            text = httpx.get(f"{url}/metrics").text
            assert 'engage_ingest_items_total{kind="customers",outcome="inserted"} 300.0' in text
    assert server.returncode == 0, server.stderr
    stderr = server.stderr
    assert "Traceback" not in stderr
    assert stderr.count("serve_endpoints") == 5  # said once, by the parent
    made = re.findall(r"metrics_dir=(\S+)", stderr)
    assert made and not Path(made[0]).exists()  # the metrics folder is removed at exit


def test_start_up_errors_are_one_line(tmp_path: Path) -> None:
    run(["init", "proj"], tmp_path)
    proj = tmp_path / "proj"
    proc = run(["serve", "--port", str(free_port())], proj, code=1)
    assert "run `engage db upgrade`" in proc.stderr
    run(["db", "upgrade"], proj)
    bad = {"SENDGRID_WEBHOOK_PUBLIC_KEY": "bm90IGEga2V5"}
    proc = run(["serve", "--port", str(free_port())], proj, bad, code=1)
    assert proc.stderr.strip().splitlines() == [
        "error: SENDGRID_WEBHOOK_PUBLIC_KEY is not an ECDSA P-256 public key: paste the "
        "Verification Key shown under Settings > Mail Settings > Event Webhook"
    ]
    assert "bm90IGEga2V5" not in proc.stderr


@pytest.mark.parametrize("option", ["--workers", "--port"])
def test_bad_options_are_usage_errors(tmp_path: Path, option: str) -> None:
    run(["serve", option, "-1"], tmp_path, code=2)


def test_the_demo_in_the_web_interface_of_engage_serve(tmp_path: Path) -> None:
    """The command the demo prints: `engage serve` with ENGAGE_UI_PASSWORD serves
    the interface beside the API; without it the interface is off and says so."""
    demo = run(["demo", "shop", "--customers", "80"], tmp_path)
    assert "ENGAGE_UI_PASSWORD=demo" in demo.stdout and "http://127.0.0.1:8080/" in demo.stdout
    env = dict(line.split("=", 1) for line in (tmp_path / "shop" / ".env").read_text().splitlines())
    with serving(["--config", "shop/config.yaml", "serve"], tmp_path,
                 {**env, "ENGAGE_UI_PASSWORD": "demo"}) as server:
        with httpx.Client(base_url=server.url) as c:
            assert c.get("/healthz").status_code == 200  # the API still answers first
            r = c.get("/")
            assert r.status_code == 303 and r.headers["location"].startswith("/login")
            token = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)  # type: ignore[union-attr]
            r = c.post("/login", data={"csrf": token, "password": "demo", "next": "/report"})
            assert r.status_code == 303
            page = c.get("/report")
            assert page.status_code == 200 and 'data-figure="retention.rate"' in page.text
            assert "content-security-policy" in page.headers
            assert c.get("/calendar-no-such-page", headers={"Accept": "application/json"}).status_code == 404
    assert server.returncode == 0, server.stderr
    with serving(["--config", "shop/config.yaml", "serve"], tmp_path, env) as server:
        assert httpx.get(server.url + "/", follow_redirects=False).status_code == 404
    assert "ENGAGE_UI_PASSWORD" in server.stderr
