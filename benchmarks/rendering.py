"""Dry-run rendering rate: ``Renderer.render_email`` vs bare Jinja2.

Recipients are real rows of the data set: customers with points expiring
within 14 days (the points template needs an expiry date). Each render is
one complete email: subject, HTML and text (derived from the HTML when the
template has no ``email.txt.j2``), for the example
templates in turn. The reference renders the same template files with a
plain ``jinja2.Environment`` (same filters and options, no sandbox) from
contexts built beforehand, and does not derive text: it is the floor.
"""

from __future__ import annotations

import itertools
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from engage.campaigns.audience import stream_audience
from engage.campaigns.schema import Audience
from engage.customers.recipients import Recipient
from engage.templating import Renderer, autoescape_for
from engage.templating.context import CampaignInfo, build_context
from engage.templating.environment import make_environment
from engage.unsubscribe import make_token, unsubscribe_url

from .common import SECRET, Context, Result, best_of, load_avg

TEMPLATES = ("winback", "points-expiring", "vip-thanks")
TARGET_PER_SECOND = 5000
EXPIRING = {"points_expiring_within": "14d"}


def _recipients(ctx: Context, n: int) -> list[Recipient]:
    out: list[Recipient] = []
    for batch in stream_audience(
        ctx.engine, Audience.model_validate(EXPIRING), ctx.config, ctx.now, limit=n
    ):
        out.extend(batch)
    return out


def _bare_env(ctx: Context) -> Environment:
    sandbox = make_environment(ctx.config.templates_path)
    env = Environment(
        loader=FileSystemLoader(ctx.config.templates_path),
        autoescape=autoescape_for,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=sandbox.finalize,
        cache_size=-1,
    )
    env.filters.update(sandbox.filters)
    return env


def run(ctx: Context, renders: int = 3000, runs: int = 3) -> list[Result]:
    # Each run renders other customers: rendering memoises what repeats across
    # customers (layout lines of the derived text, formatted dates), and a run
    # over customers already rendered would hit their own lines too.
    per_run = min(renders, 1000)
    recipients = _recipients(ctx, per_run * runs)
    infos = [
        CampaignInfo(name=f"bench-{t}", template=t, utm={"source": "engage"}) for t in TEMPLATES
    ]
    chunks = _split(recipients, runs)
    job_sets = [
        list(itertools.islice(itertools.cycle(itertools.product(chunk, infos)), renders))
        for chunk in chunks
    ]
    renderer = Renderer(ctx.config, secret_key=SECRET)
    remaining = iter(job_sets)

    def engage_render() -> int:
        jobs = next(remaining)
        for recipient, info in jobs:
            renderer.render_email(info.template, info, recipient, ctx.now)
        return len(jobs)

    env = _bare_env(ctx)
    templates = {
        t: [
            env.get_template(f"{t}/{leaf}")
            for leaf in ("subject.j2", "email.html.j2", "email.txt.j2")
            if (ctx.config.templates_path / t / leaf).exists()
        ]
        for t in TEMPLATES
    }
    contexts: list[tuple[list[Any], dict[str, Any]]] = []
    for recipient, info in job_sets[0]:
        token = make_token(SECRET, recipient.customer_id, "email", info.name)
        url = unsubscribe_url(ctx.config.public_url, token)
        contexts.append(
            (templates[info.template], build_context(ctx.config, info, recipient, ctx.now, url))
        )

    def bare_render() -> int:
        for tpls, context in contexts:
            for tpl in tpls:
                tpl.render(context)
        return len(contexts)

    engage_s, done = best_of(runs, engage_render)
    bare_s, _ = best_of(runs, bare_render)
    rate, bare_rate = done / engage_s, len(contexts) / bare_s
    return [
        Result(
            name="dry-run rendering (subject+HTML+text)",
            figure=round(rate),
            unit="msg/s",
            reference=round(bare_rate),
            reference_label="bare Jinja2, msg/s",
            target=f">= {TARGET_PER_SECOND} msg/s",
            passed=rate >= TARGET_PER_SECOND,
            ratio=round(rate / bare_rate, 2),
            details={
                "renders": done,
                # fewer than asked on a small data set: then runs repeat customers
                "customers_per_run": min(len(chunk) for chunk in chunks),
                "customers_repeat": len(recipients) < per_run * runs,
                "templates": list(TEMPLATES),
            },
            load_avg=load_avg(),
        )
    ]


def _split(items: list[Any], parts: int) -> list[list[Any]]:
    """``parts`` disjoint slices (the data set may hold fewer recipients than asked:
    then the slices are smaller, never empty)."""
    size = max(1, len(items) // parts)
    return [items[k * size : (k + 1) * size] or items[-size:] for k in range(parts)]
