"""The soak of bench/soak.py, short: mixed load at concurrency 64 while 6 versions are
published and 3 broken ones appear; nothing fails and memory does not creep."""

from __future__ import annotations

from pathlib import Path

from bench.soak import RSS_LIMIT, Options, run_soak, summary


def test_short_soak_loses_nothing_and_serves_only_valid_versions(tmp_path: Path) -> None:
    # Warm-up of 3 s: RSS is compared once traffic and the first swaps have sized the heap.
    report = run_soak(Options(duration_s=8, versions=6, warmup_s=3), tmp_path)
    print(summary(report))  # shown with -s, or when an assertion fails
    assert report.requests >= 200, "too little traffic to mean anything"
    assert not report.failures, report.failures  # only the documented 503 is allowed
    assert sum(n for (_, status), n in report.statuses.items() if status not in (200, 503)) == 0
    seen, valid = set(report.versions_seen), {str(v) for v in report.published}
    assert seen <= valid, f"served versions {seen - valid} that were never valid"
    assert not seen & {str(v) for v in report.broken}
    assert report.final_seen_at_s is not None, "the last version published was never served"
    assert len(seen) >= 3, f"too few swaps observed: {seen}"
    statuses = {v["version"]: v["status"] for v in report.models["versions"]}
    # A broken version is rejected when a poll examines it; when a newer valid version arrived
    # before any poll did, it is never examined, and listed as "unvalidated".
    truncated, wrong_sha, no_manifest = sorted(report.broken)
    assert statuses[truncated] in ("rejected", "unvalidated")
    assert statuses[wrong_sha] in ("rejected", "unvalidated")
    assert statuses[no_manifest] == "incomplete"
    assert statuses[report.published[-1]] == "serving"
    assert max(report.healthz_s) < 5, "/healthz stalled under load"
    assert report.rss_growth() < RSS_LIMIT, f"RSS grew {report.rss_growth():.1%}"
