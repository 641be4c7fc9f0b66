"""WorkBench's "domain tools only" prompt setting: offer a task only its domains' tools + the directory.

Why: the 27 schemas are most of a prompt's tokens; a small model (and the CPU demo) trains on far
shorter sequences when a task sees only the tools of its own domains. The task's domains are its
category's domain plus the domains of its ground-truth calls (multi-domain tasks), so the correct
tools are always offered; the company directory is always offered (WorkBench does the same).
"""

from __future__ import annotations

import copy

from environment.workplace.env import DOMAINS

DIRECTORY = "company_directory"


def tool_domain(tool_name: str) -> str:
    for domain in (*DOMAINS, DIRECTORY):
        if tool_name.startswith(domain + "_"):
            return domain
    raise ValueError(f"tool '{tool_name}' belongs to no known domain ({', '.join(DOMAINS)})")


def sample_domains(sample: dict) -> set[str]:
    domains = {d for d in DOMAINS if sample.get("category", "").endswith(d)}
    domains |= {tool_domain(call["name"]) for call in sample.get("ground_truth") or []}
    return domains - {DIRECTORY}


def restrict_tools(sample: dict, subset: str) -> dict:
    """A copy of ``sample`` whose ``responses_create_params.tools`` keeps only the task's domains'
    tools plus the directory when ``subset == "domain"``; unchanged for ``"all"``."""
    if subset == "all":
        return sample
    keep = sample_domains(sample) | {DIRECTORY}
    out = copy.copy(sample)
    params = dict(sample["responses_create_params"])
    params["tools"] = [t for t in params["tools"] if tool_domain(t["name"]) in keep]
    out["responses_create_params"] = params
    return out
