"""Analytics templates: plots over explicit date ranges, many conditional on the data.

Dates are always explicit ("from October 3 to November 12", "for October", "the last 7 days including
today") so the answer's time_min/time_max are not a guess; the sandbox's data runs 2023-09-01 to
2023-11-30 (today) inclusive.
"""

from __future__ import annotations

import random
from datetime import date, timedelta

from environment.workplace.tasks import vocab
from environment.workplace.tasks.base import (
    TODAY,
    Draft,
    call,
    collect_templates,
    iso,
    nl_date,
    pick,
    template,
)
from environment.workplace.tasks.sandbox import Sandbox

FIRST_DAY = date(2023, 9, 1)
METRICS = tuple(vocab.METRICS)
SUMMABLE = (
    "total_visits",
    "user_engaged",
    "visits_direct",
    "visits_referral",
    "visits_search_engine",
    "visits_social_media",
)


def _metric(rng: random.Random, choices: tuple[str, ...] = METRICS) -> tuple[str, str]:
    metric = pick(rng, choices)
    return metric, pick(rng, vocab.METRICS[metric])


def _plot_type(rng: random.Random, choices: tuple[str, ...] = tuple(vocab.PLOT_TYPES)) -> tuple[str, str]:
    kind = pick(rng, choices)
    return kind, pick(rng, vocab.PLOT_TYPES[kind])


def _range(rng: random.Random, min_days: int = 2) -> tuple[str, str]:
    span = (TODAY - FIRST_DAY).days
    a = rng.randint(0, span - min_days)
    b = rng.randint(a + min_days - 1, span)
    return iso(FIRST_DAY + timedelta(days=a)), iso(FIRST_DAY + timedelta(days=b))


def _plot(time_min: str, time_max: str, metric: str, kind: str) -> tuple[str, dict[str, str]]:
    return call("analytics_create_plot", time_min=time_min, time_max=time_max, value_to_plot=metric, plot_type=kind)


@template(
    "analytics",
    (
        "Can you make a {kind_text} of {metric_text} from {start} to {end}?",
        "Plot {metric_text} between {start} and {end} as a {kind_text}.",
        "I'd like a {kind_text} showing {metric_text} for {start} through {end}.",
    ),
    writes=("analytics_create_plot",),
)
def plot_range(rng: random.Random, sb: Sandbox) -> Draft | None:
    metric, metric_text = _metric(rng)
    kind, kind_text = _plot_type(rng)
    start, end = _range(rng)
    params = {"kind_text": kind_text, "metric_text": metric_text, "start": nl_date(start), "end": nl_date(end)}
    return Draft(params, [_plot(start, end, metric, kind)])


@template(
    "analytics",
    (
        "Plot the distribution of {metric_text} on {day}",
        "Show me a histogram of {metric_text} for {day} only.",
        "I need a histogram of {metric_text} for the single day {day}.",
        "I need a histogram of {metric_text} for the single day {day}.",
    ),
    writes=("analytics_create_plot",),
)
def histogram_on_day(rng: random.Random, sb: Sandbox) -> Draft | None:
    metric, metric_text = _metric(rng)
    day = iso(FIRST_DAY + timedelta(days=rng.randint(0, (TODAY - FIRST_DAY).days)))
    return Draft({"metric_text": metric_text, "day": nl_date(day)}, [_plot(day, day, metric, "histogram")])


@template(
    "analytics",
    (
        "Can you plot the distribution of both {first_text} and {second_text} between {start} and {end}? "
        "{first_cap} first.",
        "Make two histograms for {start} to {end}: first {first_text}, then {second_text}.",
        "Histograms please, from {start} to {end}: {first_text} and after it {second_text}.",
        "Histograms please, from {start} to {end}: {first_text} and after it {second_text}.",
    ),
    writes=("analytics_create_plot",),
)
def histograms_two(rng: random.Random, sb: Sandbox) -> Draft | None:
    first, first_text = _metric(rng)
    second, second_text = _metric(rng)
    if first == second:
        return None
    start, end = _range(rng)
    params = {
        "first_text": first_text,
        "first_cap": first_text[0].upper() + first_text[1:],
        "second_text": second_text,
        "start": nl_date(start),
        "end": nl_date(end),
    }
    return Draft(params, [_plot(start, end, first, "histogram"), _plot(start, end, second, "histogram")])


@template(
    "analytics",
    (
        "Make {kind_text}s of {first_text} and then {second_text} from {start} to {end}",
        "I need two {kind_text}s covering {start} to {end}: one of {first_text}, then one of {second_text}.",
        "From {start} to {end}, plot {first_text} as a {kind_text} and then {second_text} as another {kind_text}.",
        "From {start} to {end}, plot {first_text} as a {kind_text} and then {second_text} as another {kind_text}.",
    ),
    writes=("analytics_create_plot",),
)
def two_metrics_range(rng: random.Random, sb: Sandbox) -> Draft | None:
    first, first_text = _metric(rng)
    second, second_text = _metric(rng)
    if first == second:
        return None
    kind, kind_text = _plot_type(rng, ("bar", "line", "scatter"))
    start, end = _range(rng)
    params = {
        "kind_text": kind_text,
        "first_text": first_text,
        "second_text": second_text,
        "start": nl_date(start),
        "end": nl_date(end),
    }
    return Draft(params, [_plot(start, end, first, kind), _plot(start, end, second, kind)])


def threshold_near_extreme(rng: random.Random, values: list[float], more: bool) -> int:
    """A whole-number threshold within 2 of the window's largest (``more``) or smallest value, at least 1.

    "Was X more than T on any day" is then true or false about equally often (a threshold drawn from the
    whole range would almost always be exceeded somewhere in a long window), and never trivially false
    like "less than 0".
    """
    extreme = max(values) if more else min(values)
    return max(1, round(extreme) + rng.randint(-2, 2))


@template(
    "analytics",
    (
        "If {metric_text} was {direction} than {threshold} on any day between {start} and {end}, make a line plot "
        "of it over that period",
        "Was {metric_text} ever {direction} than {threshold} on a single day from {start} to {end}? If so, plot it "
        "as a line chart for those dates.",
        "Check {metric_text} day by day from {start} to {end}. If any day was {direction} than {threshold}, "
        "make a line plot of it for that range.",
        "Check {metric_text} day by day from {start} to {end}. If any day was {direction} than {threshold}, "
        "make a line plot of it for that range.",
    ),
    writes=("analytics_create_plot",),
    conditional=True,
)
def line_if_any_day(rng: random.Random, sb: Sandbox) -> Draft | None:
    metric, metric_text = _metric(rng, ("total_visits", "user_engaged", "session_duration_seconds"))
    start, end = _range(rng, 3)
    values = list(sb.daily(metric, start, end).values())
    more = rng.random() < 0.5
    threshold = threshold_near_extreme(rng, values, more)
    hit = any(v > threshold for v in values) if more else any(v < threshold for v in values)
    params = {
        "metric_text": metric_text,
        "direction": "more" if more else "less",
        "threshold": str(threshold),
        "start": nl_date(start),
        "end": nl_date(end),
    }
    return Draft(params, [_plot(start, end, metric, "line")] if hit else [])


@template(
    "analytics",
    (
        "Can you make a line plot of the {rank} popular traffic source from {start} to {end}?",
        "Which traffic source brought the {rank_visits} visits between {start} and {end}? Plot its visits as a "
        "line chart for that period.",
        "Plot, as a line chart, visits from whichever traffic source was the {rank} popular between {start} and {end}.",
        "Plot, as a line chart, visits from whichever traffic source was the {rank} popular between {start} and {end}.",
    ),
    writes=("analytics_create_plot",),
)
def popular_source(rng: random.Random, sb: Sandbox) -> Draft | None:
    start, end = _range(rng, 5)
    totals = {m: sum(sb.daily(m, start, end).values()) for m in vocab.SOURCES}
    most = rng.random() < 0.5
    best = (max if most else min)(totals.values())
    winners = [m for m, v in totals.items() if v == best]
    if len(winners) != 1:
        return None
    params = {
        "rank": "most" if most else "least",
        "rank_visits": "most" if most else "fewest",
        "start": nl_date(start),
        "end": nl_date(end),
    }
    return Draft(params, [_plot(start, end, winners[0], "line")])


@template(
    "analytics",
    (
        "If we got more traffic from {first_text} than {second_text} between {start} and {end}, make bar charts of "
        "both over that period ({first_text} first)",
        "Did {first_text} bring more visits than {second_text} from {start} to {end}? If yes, make a bar chart "
        "of each for that period, starting with {first_text}.",
        "Compare {first_text} and {second_text} traffic from {start} to {end}; if {first_text} was higher, "
        "make a bar chart of each for that period, {first_text} first.",
        "Compare {first_text} and {second_text} traffic from {start} to {end}; if {first_text} was higher, "
        "make a bar chart of each for that period, {first_text} first.",
    ),
    writes=("analytics_create_plot",),
    conditional=True,
)
def bars_if_source_beats(rng: random.Random, sb: Sandbox) -> Draft | None:
    first, second = rng.sample(sorted(vocab.SOURCES), 2)
    start, end = _range(rng, 5)
    a, b = sum(sb.daily(first, start, end).values()), sum(sb.daily(second, start, end).values())
    if a == b:
        return None
    params = {
        "first_text": vocab.SOURCES[first],
        "second_text": vocab.SOURCES[second],
        "start": nl_date(start),
        "end": nl_date(end),
    }
    calls = [_plot(start, end, first, "bar"), _plot(start, end, second, "bar")] if a > b else []
    return Draft(params, calls)


@template(
    "analytics",
    (
        "If {metric_text} on {end} was more than {pct}% {direction} than on {start}, make a line plot of it from "
        "{start} to {end}",
        "Compare {metric_text} on {start} and {end}. If the {end} value is over {pct}% {direction}, plot it as a "
        "line chart for {start} through {end}.",
        "Was {metric_text} on {end} more than {pct}% {direction} than on {start}? If so, line-plot it from "
        "{start} to {end}.",
        "Was {metric_text} on {end} more than {pct}% {direction} than on {start}? If so, line-plot it from "
        "{start} to {end}.",
    ),
    writes=("analytics_create_plot",),
    conditional=True,
)
def line_if_growth(rng: random.Random, sb: Sandbox) -> Draft | None:
    metric, metric_text = _metric(rng, ("total_visits", "user_engaged", "session_duration_seconds"))
    start, end = _range(rng, 2)
    daily = sb.daily(metric, start, end)
    v0, v1 = daily.get(start), daily.get(end)
    if not v0 or v1 is None:
        return None
    pct = pick(rng, (5, 10, 20, 25, 50))
    higher = rng.random() < 0.5
    change = (v1 - v0) / v0 * 100.0
    if abs(abs(change) - pct) < 1e-9:
        return None
    hit = change > pct if higher else -change > pct
    params = {
        "metric_text": metric_text,
        "start": nl_date(start),
        "end": nl_date(end),
        "pct": str(pct),
        "direction": "higher" if higher else "lower",
    }
    return Draft(params, [_plot(start, end, metric, "line")] if hit else [])


@template(
    "analytics",
    (
        "If we had more than {threshold} {metric_text} in total between {start} and {end}, make a bar chart of "
        "{metric_text} for that period",
        "Add up {metric_text} from {start} to {end}; if the sum is above {threshold}, plot it as a bar chart.",
        "Make a bar chart of {metric_text} from {start} to {end}, but only if the total over those days is "
        "more than {threshold}.",
        "Make a bar chart of {metric_text} from {start} to {end}, but only if the total over those days is "
        "more than {threshold}.",
    ),
    writes=("analytics_create_plot",),
    conditional=True,
)
def bar_if_total_above(rng: random.Random, sb: Sandbox) -> Draft | None:
    metric = pick(rng, SUMMABLE)
    metric_text = vocab.METRICS[metric][0]
    start, end = _range(rng, 3)
    total = sum(sb.daily(metric, start, end).values())
    threshold = int(total * rng.uniform(0.6, 1.4)) // 5 * 5
    if threshold == total:
        return None
    params = {"threshold": str(threshold), "metric_text": metric_text, "start": nl_date(start), "end": nl_date(end)}
    return Draft(params, [_plot(start, end, metric, "bar")] if total > threshold else [])


MONTHS = {
    "September": ("2023-09-01", "2023-09-30"),
    "October": ("2023-10-01", "2023-10-31"),
    "November": ("2023-11-01", "2023-11-30"),
}


@template(
    "analytics",
    (
        "Make a {kind_text} of {metric_text} for {month}",
        "Plot {metric_text} over the whole month of {month} as a {kind_text}.",
        "Can I get a {kind_text} of {metric_text} covering all of {month}?",
    ),
    writes=("analytics_create_plot",),
)
def plot_month(rng: random.Random, sb: Sandbox) -> Draft | None:
    metric, metric_text = _metric(rng)
    kind, kind_text = _plot_type(rng)
    month = pick(rng, sorted(MONTHS))
    start, end = MONTHS[month]
    return Draft(
        {"kind_text": kind_text, "metric_text": metric_text, "month": month}, [_plot(start, end, metric, kind)]
    )


@template(
    "analytics",
    (
        "If we had more {metric_text} in {later} than in {earlier}, make a {kind_text} of {metric_text} for {later}",
        "Compare {metric_text} summed over {earlier} with the sum over {later}. If {later} was higher, plot "
        "{later}'s {metric_text} as a {kind_text}.",
        "Plot {metric_text} for {later} as a {kind_text} if its {later} total beats its {earlier} total.",
        "Plot {metric_text} for {later} as a {kind_text} if its {later} total beats its {earlier} total.",
    ),
    writes=("analytics_create_plot",),
    conditional=True,
)
def plot_if_month_higher(rng: random.Random, sb: Sandbox) -> Draft | None:
    metric = pick(rng, SUMMABLE)
    metric_text = vocab.METRICS[metric][0]
    earlier, later = pick(rng, (("September", "October"), ("October", "November"), ("September", "November")))
    kind, kind_text = _plot_type(rng, ("bar", "line"))
    a = sum(sb.daily(metric, *MONTHS[earlier]).values())
    b = sum(sb.daily(metric, *MONTHS[later]).values())
    if a == b:
        return None
    params = {"metric_text": metric_text, "later": later, "earlier": earlier, "kind_text": kind_text}
    return Draft(params, [_plot(*MONTHS[later], metric, kind)] if b > a else [])


@template(
    "analytics",
    (
        "Make a {kind_text} of {metric_text} for the last {days} days, including today",
        "Plot {metric_text} over the past {days} days (today included) as a {kind_text}.",
        "Show {metric_text} for the {days} days up to and including today in a {kind_text}.",
        "Show {metric_text} for the {days} days up to and including today in a {kind_text}.",
    ),
    writes=("analytics_create_plot",),
)
def plot_last_days(rng: random.Random, sb: Sandbox) -> Draft | None:
    metric, metric_text = _metric(rng)
    kind, kind_text = _plot_type(rng)
    days = rng.randint(2, 30)
    start = iso(TODAY - timedelta(days=days - 1))
    return Draft(
        {"kind_text": kind_text, "metric_text": metric_text, "days": str(days)},
        [_plot(start, iso(TODAY), metric, kind)],
    )


TEMPLATES = collect_templates(globals())
