#!/usr/bin/env python3
"""Summarises a bench/compare.sh result file: medians over the repetitions, the
spread (min–max), and the ratio Mayfly / OpenBao (for times and memory: OpenBao /
Mayfly, so above 1 always means Mayfly is ahead). Prints a Markdown table."""

import statistics
import sys
from collections import defaultdict

NAMES = {
    "login": "workload login (RFC 8693 exchange / auth/jwt/login)",
    "jwt": "short-lived JWT for an audience",
    "x509": "X.509 leaf (Workload API X.509-SVID / pki/issue)",
    "postgres": "PostgreSQL credential",
    "vault_login": "auth/jwt/login, the same request to both (Mayfly's Vault-compatible API)",
    "vault_postgres": "database/creds/app, the same request to both (Mayfly's Vault-compatible API)",
}


def ms(text):
    """wrk latency ("812.00us", "1.52ms", "1.01s") in milliseconds."""
    for unit, factor in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


def spread(values, fmt):
    med = statistics.median(values)
    if len(values) == 1:
        return med, fmt(med)
    return med, f"{fmt(med)} ({fmt(min(values))} – {fmt(max(values))})"


def main(path):
    load = defaultdict(lambda: defaultdict(list))  # (op, c) -> sys -> [(rps, p50, p99)]
    timed = defaultdict(lambda: defaultdict(list))  # (kind, what) -> sys -> [ms or kib]
    for line in open(path):
        if line.startswith("#") or not line.strip():
            continue
        f = line.split()
        if f[0] == "load" and len(f) >= 8:
            load[(f[1], int(f[2]))][f[3]].append((float(f[5]), ms(f[6]), ms(f[7])))
        elif f[0] in ("revoke_tokens", "revoke_users", "revoke_prefix", "memory_kib") and len(f) >= 6:
            timed[(f[0], f[1])][f[3]].append(float(f[5]))
    rate = lambda v: f"{v:,.0f}"
    lat = lambda v: f"{v:.2f}"
    print()
    print("| operation | concurrency | Mayfly req/s | OpenBao req/s | Mayfly ÷ OpenBao | Mayfly p50 / p99 ms | OpenBao p50 / p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for (op, c), by in sorted(load.items(), key=lambda k: (list(NAMES).index(k[0][0]) if k[0][0] in NAMES else 9, k[0][1])):
        cells, meds = [], {}
        for sys_ in ("mayfly", "openbao"):
            runs = by.get(sys_, [])
            if not runs:
                cells += ["–", "–"]
                continue
            meds[sys_], text = spread([r[0] for r in runs], rate)
            p50 = statistics.median(r[1] for r in runs)
            p99 = statistics.median(r[2] for r in runs)
            cells += [text, f"{lat(p50)} / {lat(p99)}"]
        ratio = f"{meds['mayfly'] / meds['openbao']:.1f}×" if len(meds) == 2 and meds["openbao"] else "–"
        print(f"| {NAMES.get(op, op)} | {c} | {cells[0]} | {cells[2]} | {ratio} | {cells[1]} | {cells[3]} |")
    print()
    print("| measurement | Mayfly | OpenBao | OpenBao ÷ Mayfly |")
    print("|---|---|---|---|")
    for (kind, what), by in sorted(timed.items()):
        if kind == "memory_kib":
            label, fmt = f"resident memory, {what.replace('_', ' ')}", lambda v: f"{v / 1024:.0f} MiB"
        else:
            noun = {"revoke_tokens": "tokens (one audience at Mayfly, the login mount at OpenBao)", "revoke_users": "PostgreSQL users"}.get(
                kind, "PostgreSQL users with PUT sys/leases/revoke-prefix/database/creds/app on both")
            label, fmt = f"revoke {int(float(what)):,} {noun}, until all are dead", lambda v: f"{v:,.0f} ms"
        cells, meds = [], {}
        for sys_ in ("mayfly", "openbao"):
            vals = by.get(sys_, [])
            if vals:
                meds[sys_], text = spread(vals, fmt)
                cells.append(text)
            else:
                cells.append("–")
        ratio = f"{meds['openbao'] / meds['mayfly']:.1f}×" if len(meds) == 2 and meds["mayfly"] else "–"
        print(f"| {label} | {cells[0]} | {cells[1]} | {ratio} |")


if __name__ == "__main__":
    main(sys.argv[1])
