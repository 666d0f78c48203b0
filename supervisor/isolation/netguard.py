"""What a model with network access may still not reach on the process runtime: this machine's
loopback, except the gateway.

A box without network has a network namespace of its own with nothing in it. A box whose MANAGE
user turned network on shares the host's namespace (bubblewrap has no NAT of its own), and so
would reach the supervisor API, MLflow and any other local listener on 127.0.0.1 directly. Model
uids come from one range (``model_uid_start..end``), so two firewall rules cover every model at
once, whoever they are: loopback traffic from those uids is refused, except to the gateway's
port, where credentials are checked like anyone's. Only root can set them, and only where
``iptables`` exists: otherwise ``check`` says so, and the health report carries it.
"""

from __future__ import annotations

import shutil
import subprocess

from supervisor.settings import Settings

COMMENT = "modelserve: model boxes reach only the gateway on loopback"


def _rules(settings: Settings) -> list[list[str]]:
    owner = ["-o", "lo", "-m", "owner", "--uid-owner", f"{settings.model_uid_start}-{settings.model_uid_end}",
             "-m", "comment", "--comment", COMMENT]
    return [
        [*owner, "-p", "tcp", "--dport", str(settings.port), "-j", "ACCEPT"],
        [*owner, "-j", "REJECT"],
    ]


def ensure(settings: Settings) -> str | None:
    """Puts the rules in place (once; idempotent). None when they hold, else why not."""
    problems = []
    for tool in ("iptables", "ip6tables"):
        exe = shutil.which(tool)
        if exe is None:
            problems.append(f"{tool} not found")
            continue
        rules = _rules(settings)
        present = [subprocess.run([exe, "-w", "5", "-C", "OUTPUT", *r], capture_output=True, timeout=30).returncode == 0
                   for r in rules]
        if all(present):
            continue
        for rule, there in zip(rules, present, strict=True):
            if there:  # put back in order below: ACCEPT must stay above REJECT
                subprocess.run([exe, "-w", "5", "-D", "OUTPUT", *rule], capture_output=True, timeout=30)
        for rule in reversed(rules):
            added = subprocess.run([exe, "-w", "5", "-I", "OUTPUT", "1", *rule], capture_output=True, text=True,
                                   timeout=30)
            if added.returncode != 0:
                problems.append(f"{tool}: {added.stderr.strip() or 'refused'}")
                break
    return "; ".join(problems) or None
