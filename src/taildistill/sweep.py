"""`taildistill sweep`: any configs over a grid of values (`--set KEY=V1,V2`) and seeds, run by
the same scheduler as the suites, with a comparison report over every run."""
from __future__ import annotations

import itertools
from pathlib import Path

from .errors import ConfigError


def parse_sets(sets: list[str]) -> list[tuple[str, list[str]]]:
    """`KEY=V1,V2` -> (KEY, [V1, V2]); a value holding commas goes in brackets: `KEY=[1,2],[3]`."""
    out = []
    for text in sets:
        if "=" not in text:
            raise ConfigError(f"--set '{text}' must look like dotted.key=value1,value2")
        key, values = text.split("=", 1)
        parts, depth, cur = [], 0, ""
        for ch in values:
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
                continue
            depth += ch in "[{"
            depth -= ch in "]}"
            cur += ch
        parts.append(cur)
        if not key or not all(p.strip() for p in parts):
            raise ConfigError(f"--set '{text}' has an empty key or value")
        if key in (k for k, _ in out):  # the later one would silently win
            raise ConfigError(f"--set gives {key} twice; list its values in one --set ({key}=V1,V2)")
        out.append((key, [p.strip() for p in parts]))
    return out


def label_of(assignment: list[tuple[str, str]]) -> str:
    """A folder name for one grid point: `temperature2_ratio50`."""
    if not assignment:
        return "base"
    safe = "".join(c if c.isalnum() or c in "-._" else "-" for c in "_".join(f"{k.split('.')[-1]}{v}" for k, v in assignment))
    return safe[:150]


def run_sweep(files: list[str], overrides: list[str], sets: list[str], seeds: int, out: Path, jobs: int = 1,
              per_gpu: int | None = None, executor: str = "local", quiet: bool = False, command: str = "",
              time_limit: float | None = None) -> Path:
    from .report import write_comparison
    from .rundir import RunDir
    from .scheduler import RunSpec, execute

    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    grid = parse_sets(sets)
    points = [list(zip([k for k, _ in grid], combo)) for combo in itertools.product(*[v for _, v in grid])] or [[]]
    specs = []
    for point in points:
        label = label_of(point)
        for seed in range(seeds):
            specs.append(RunSpec(f"{label}/seed{seed}", out / label / f"seed{seed}", list(files),
                                 [*overrides, *(f"{k}={v}" for k, v in point), f"train.seed={seed}", f"name={label}"]))
    def report(outcomes, cost):
        done = [o.run_dir for o in outcomes if RunDir(o.run_dir).is_finished()]
        return write_comparison(done, out, title=f"Sweep over {', '.join(k for k, _ in grid) or 'seeds'}") if done else None

    return execute(specs, out, "sweep", executor, jobs, per_gpu, quiet, command, report, time_limit)
