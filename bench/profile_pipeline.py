"""Where the file path's time goes, per Bytewax step: the same job as ``bench/pipeline.py``'s ``file_events_per_s``
(``driftrag run --events F --items F --no-api``, warm embeddings, 1 worker, in process), with every Python callback
the dataflow hands to Bytewax timed. Prints one JSON object on stdout; progress goes to stderr.

    python bench/profile_pipeline.py                      # 100,000 events, as bench/pipeline.py
    python bench/profile_pipeline.py --no-drift           # without the drift step
    python bench/profile_pipeline.py --cprofile 25        # also the 25 functions with the most own time (cProfile)

How: after the job has built its dataflow and before it runs, each core operator's callback (``flat_map_batch``
mappers, ``branch`` predicates, ``stateful_batch`` logic, the source's ``next_batch`` and each sink's
``write_batch``) is wrapped in a timer. Bytewax calls them one at a time on the worker thread, so their times do
not overlap; whatever the run spends outside them is Bytewax itself (moving batches between steps, keying,
epochs) and is reported as ``(bytewax runtime)``. The timers cost two clock reads per call, a call being a batch.

``steps``: one row per step of ``streams/dataflow.py`` (an operator such as ``op.map`` is one core step under
it), with the Python function Bytewax calls, seconds, share of the timed run, calls (batches, or per-key calls
for stateful steps). ``--cprofile N`` runs the job a second time under cProfile and lists the N functions with the
most own time: a second view, of functions rather than steps, whose own overhead inflates small functions.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.pipeline import build_codebook_dir, log, make_job  # noqa: E402
from streams.generator import GeneratorConfig, write_files  # noqa: E402


class StepTimes:
    """Seconds and calls per (step, function), accumulated by the wrappers :func:`instrument` installs."""

    def __init__(self) -> None:
        self.seconds: dict[tuple[str, str], float] = {}
        self.calls: dict[tuple[str, str], int] = {}

    def timed(self, step: str, fn: Any, name: str | None = None) -> Any:
        key = (step, name or _name(fn))
        seconds, calls, clock = self.seconds, self.calls, time.perf_counter
        seconds.setdefault(key, 0.0)
        calls.setdefault(key, 0)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[key] += clock() - t0
                calls[key] += 1
        return wrapper


def _name(fn: Any) -> str:
    """``module.qualname`` of a callback (lambdas with their line), what a reader can find in the source."""
    fn = getattr(fn, "__func__", fn)
    code = getattr(fn, "__code__", None)
    mod = getattr(fn, "__module__", None) or "?"
    qual = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    if code is not None and "<lambda>" in qual:
        return f"{mod}.{qual}:{code.co_firstlineno}"
    return f"{mod}.{qual}"


def _step(step_id: str, flow_id: str) -> str:
    """The step of ``streams/dataflow.py`` a core operator belongs to: its id's first part under the flow."""
    parts = step_id.split(".")
    return parts[1] if parts[0] == flow_id and len(parts) > 1 else step_id


def _wrap_object_method(obj: Any, method: str, times: StepTimes, step: str, name: str) -> None:
    """Time ``obj.method`` by an instance attribute: Bytewax looks the method up on the object at each call."""
    object.__setattr__(obj, method, times.timed(step, getattr(obj, method), name))


def _instrument_logic(builder: Any, times: StepTimes, step: str) -> Any:
    def build(resume: Any) -> Any:
        logic = builder(resume)
        inner = getattr(logic, "_inner", logic)  # GuardedLogic: name the logic it guards
        name = f"{type(inner).__module__}.{type(inner).__qualname__}"
        for method in ("on_batch", "on_notify", "on_eof", "snapshot"):
            _wrap_object_method(logic, method, times, step, f"{name}.{method}" if method != "on_batch" else name)
        return logic
    return build


def _instrument_sink(sink: Any, times: StepTimes, step: str) -> None:
    for attr in ("build", "build_part"):
        orig = getattr(sink, attr, None)
        if orig is None:
            continue

        def build(*args: Any, _orig: Any = orig) -> Any:
            part = _orig(*args)
            inner = getattr(part, "_inner", None) or part
            _wrap_object_method(part, "write_batch", times, step, f"{type(inner).__module__}.{type(inner).__qualname__}"
                                                                  ".write_batch")
            return part
        object.__setattr__(sink, attr, build)


def _instrument_source(source: Any, times: StepTimes, step: str) -> None:
    for attr in ("build", "build_part"):
        orig = getattr(source, attr, None)
        if orig is None:
            continue

        def build(*args: Any, _orig: Any = orig) -> Any:
            part = _orig(*args)
            _wrap_object_method(part, "next_batch", times, step,
                                f"{type(part).__module__}.{type(part).__qualname__}.next_batch")
            return part
        object.__setattr__(source, attr, build)


def instrument(flow: Any, times: StepTimes) -> int:
    """Wrap every core operator's callbacks in ``flow`` (see the module's docstring); returns how many steps."""
    n = 0

    def visit(op: Any) -> None:
        nonlocal n
        if not getattr(op, "core", False):
            for sub in op.substeps:
                visit(sub)
            return
        step = _step(op.step_id, flow.flow_id)
        fields = {f.name for f in dataclasses.fields(op)}
        if "mapper" in fields:
            object.__setattr__(op, "mapper", times.timed(step, op.mapper))
        elif "predicate" in fields:
            object.__setattr__(op, "predicate", times.timed(step, op.predicate))
        elif "builder" in fields:
            object.__setattr__(op, "builder", _instrument_logic(op.builder, times, step))
        elif "sink" in fields:
            _instrument_sink(op.sink, times, step)
        elif "source" in fields:
            _instrument_source(op.source, times, step)
        n += 1

    for op in flow.substeps:
        visit(op)
    return n


def warm_job(data: Path, codebooks: Path, cache: Any, no_drift: bool) -> Any:
    files = ["--events", str(data / "engagements.jsonl"), "--items", str(data / "items.jsonl"), "--no-api",
             "--codebook-dir", str(codebooks), *(["--no-drift"] if no_drift else [])]
    job = make_job(files, cache)
    job.clustering.embedder_factory().encode(["warm up"])  # as bench/pipeline.py's timed_run: the model loaded
    return job


def profile_steps(data: Path, codebooks: Path, cache: Any, no_drift: bool) -> dict[str, Any]:
    job = warm_job(data, codebooks, cache, no_drift)
    times = StepTimes()
    instrument(job.flow, times)
    t0 = time.perf_counter()
    summary = job.run()
    wall = time.perf_counter() - t0
    rows = []
    for key, s in sorted(times.seconds.items(), key=lambda kv: -kv[1]):
        if times.calls[key] == 0:
            continue
        rows.append({"step": key[0], "function": key[1], "seconds": round(s, 3), "share": round(s / wall, 4),
                     "calls": times.calls[key]})
    in_steps = sum(times.seconds.values())
    rows.append({"step": "(bytewax runtime)", "function": "between steps: batches, keying, epochs, job set-up",
                 "seconds": round(wall - in_steps, 3), "share": round((wall - in_steps) / wall, 4), "calls": None})
    return {"messages": summary["messages"], "seconds": round(wall, 3),
            "events_per_s": round(summary["messages"] / wall), "python_in_steps_share": round(in_steps / wall, 4),
            "steps": rows}


def profile_functions(data: Path, codebooks: Path, cache: Any, no_drift: bool, top: int) -> dict[str, Any]:
    job = warm_job(data, codebooks, cache, no_drift)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    job.run()
    prof.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    rows = []
    for (file, line, fn), (_cc, ncalls, tottime, cumtime, _callers) in sorted(
            stats.stats.items(), key=lambda kv: -kv[1][2])[:top]:
        where = str(Path(file).resolve().relative_to(ROOT)) if file.startswith(str(ROOT)) and ".venv" not in file \
            else Path(file).name
        rows.append({"function": f"{where}:{line}({fn})", "own_seconds": round(tottime, 3),
                     "own_share": round(tottime / wall, 4), "cumulative_seconds": round(cumtime, 3),
                     "calls": ncalls})
    return {"seconds_under_cprofile": round(wall, 3), "functions": rows}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=100_000, help="engagement events (plus content events)")
    p.add_argument("--bad-fraction", type=float, default=0.01)
    p.add_argument("--no-drift", action="store_true", help="profile the job without drift detection")
    p.add_argument("--cprofile", type=int, default=0, metavar="N", help="also list the N functions with the most "
                   "own time under cProfile (a second run)")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="driftrag-profile-"))
    try:
        gen = GeneratorConfig(seed=7, events=args.events, bad_fraction=args.bad_fraction)  # bench/pipeline.py's
        log(f"generating {args.events:,} events into {tmp}")
        write_files(gen, tmp / "data")
        _, cache = build_codebook_dir(tmp / "data" / "items.jsonl", tmp / "codebooks")
        out: dict[str, Any] = {"benchmark": "profile_pipeline", "events": args.events, "workers": 1,
                               "drift": not args.no_drift}
        out.update(profile_steps(tmp / "data", tmp / "codebooks", cache, args.no_drift))
        log(f"timed run: {out['messages']:,} messages in {out['seconds']:.2f}s = {out['events_per_s']:,}/s")
        if args.cprofile:
            out["cprofile"] = profile_functions(tmp / "data", tmp / "codebooks", cache, args.no_drift, args.cprofile)
        print(json.dumps(out))
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
