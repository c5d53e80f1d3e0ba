"""The k8s manifests pass configuration only through variables the kit actually reads."""

import re
from pathlib import Path

from workload.settings import KNOBS, STACK_OUTPUTS_ENV

REPO = Path(__file__).resolve().parent.parent
KNOWN = {knob.env for knob in KNOBS} | {STACK_OUTPUTS_ENV}


def test_every_lab_variable_in_the_manifests_is_one_the_kit_reads():
    names = set()
    for manifest in (REPO / "k8s").rglob("*.yaml"):
        names.update(re.findall(r"name:\s*([A-Z][A-Z0-9_]*(?:LAB|STACK_OUTPUTS)[A-Z0-9_]*)",
                                manifest.read_text()))  # fmt: skip
    assert names, "the manifests should hand the stack outputs to the pods"
    assert STACK_OUTPUTS_ENV in names
    assert names <= KNOWN | {n for n in names if not n.startswith("LAB_") and "STACK" not in n}
    assert not {n for n in names if "STACK_OUTPUTS" in n} - {STACK_OUTPUTS_ENV}
