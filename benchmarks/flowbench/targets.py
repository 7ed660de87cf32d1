"""benchmarks/targets.yaml and the comparison of figures with targets and the baseline."""
import yaml


def load_targets(path):
    """benchmarks/targets.yaml: `targets:`, a list of flat mappings (figure, op, value, unit,
    what); value as a float."""
    with open(path) as f:
        targets = yaml.safe_load(f)["targets"]
    for t in targets:
        t["value"] = float(t["value"])
    return targets


def check_target(t, figures):
    v = figures.get(t["figure"])
    if v is None:
        return None, "not measured"
    op, goal = t["op"], t["value"]
    ok = {">=": v >= goal, "<=": v <= goal, "<": v < goal, ">": v > goal, "==": v == goal}[op]
    if ok:
        return v, "met"
    if goal == 0:
        return v, f"MISSED ({v:,.4g} vs {goal:g})"
    if goal < 0:  # a relative change (e.g. -0.40 = 40 % fewer): the miss in points
        return v, f"MISSED by {abs(v - goal) * 100:.0f} percentage points"
    ratio = v / goal
    miss = (1 - ratio) * 100 if op in (">=", ">") else (ratio - 1) * 100
    return v, f"MISSED by {miss:.0f} %"


HIGHER_IS_BETTER = {"packets_per_s": True, "gbit_per_s": True, "records_per_s": True,
                    "signatures_per_s": True, "stored_bytes_per_flow": False,
                    "pss_mib.total": False, "cpu_s_per_mpkt": False, "drops.total": False}
