"""Mutation testing of the modules that decide answers and guard safety (issue 17 item 4). Not run in CI: slow.

    python benchmarks/mutation.py [--modules policies bundle ...] [--workdir DIR] [--max-children 2]
                                  [--max-mutants-per-module N] [--json benchmarks/results/mutation.json]
                                  [--md benchmarks/results/mutation.md]

Tool: mutmut 3 (``pip install "mutmut>=3,<4"``), run with the python of the environment this script runs
under (its ``mutmut`` executable beside ``sys.executable``).

The repository's layout (``setup.py`` maps the top-level folders ``runtime/``, ``common/``, ``export/``,
``calibrate/`` onto ``sdedge.*`` with ``package_dir``) is not one mutmut can mutate in place: it names
mutants after the file's path (``runtime/policies.py`` -> ``runtime.policies``) while the code runs as
``sdedge.runtime.policies``, so no mutant would ever be switched on. So each module is mutated in a
*staged copy* of the working tree (tracked and untracked-not-ignored files) under ``--workdir`` laid out as
``src/sdedge/{runtime,common,export,calibrate,...}`` plus ``tests/``, ``pytest.ini`` and ``benchmarks/``;
mutmut puts ``mutants/src`` first on ``sys.path`` so the staged ``sdedge`` shadows any installed one.
The repository itself is never written to (only the two results files).

The session module's tests run on both engines: the installed C++ core (``SDEDGE_NATIVE_LIBRARY`` set to
the ``libsdedge.so`` of ``SDEDGE_BUILD_NATIVE=1 pip install -e .``; the run refuses to start without it) and
the tests' tiny trained bundle, built once per run under ``--workdir`` by
``native/tests/make_fixture_bundle.py`` (the settings of ``tests/conftest.py``'s fixture) and handed to
every mutant's tests through ``SDEDGE_TEST_TINY_BUNDLE`` (a copy each time), so no mutant waits for a
training.

Each module runs with a focused pytest command: only the test files that exercise it (the suites that
need a trained checkpoint or a live server are left out: seconds per mutant, not minutes), with
``-x -q -p no:cacheprovider``; mutmut runs for each mutant only the tests that reached the mutated
function. A mutant counts as

* *killed* when a test failed (or pytest errored), *timeout* when it ran past mutmut's limit (also
  detected: both count for the score);
* *survived* when every test passed, *no tests* when no test reached its function (both count against
  the score) unless it is listed in ``benchmarks/mutation_equivalent.json``: a reviewed list of
  surviving mutants judged *equivalent* (no observable behaviour can tell them from the original), each
  with its reason. Entries are keyed by module, function and the changed source line(s) (``from`` ->
  ``to``), not by mutmut's number, so they survive unrelated edits; a stale entry is reported. An entry
  with ``"from": "*"`` covers every surviving mutant of its function (used for whole functions that this
  run cannot reach).

A listed entry is either ``"kind": "equivalent"`` or ``"kind": "unreachable"``: a mutant that is not
equivalent but that this run cannot reach, named with why (code that runs only on a GPU, or code that runs
at import time, before mutmut switches a mutant on). Both are reported; only equivalent mutants leave the
denominator of the score:

score = (killed + timeout) / (total - equivalent). Goal (issue 17): >= 90 % in each module.
score_reachable = (killed + timeout) / (total - equivalent - unreachable), beside it.

``--max-mutants-per-module N`` runs a deterministic sample (every k-th mutant name) of each module; the
results record it, and a sampled score is only an estimate.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EQUIVALENT_FILE = Path(__file__).resolve().with_name("mutation_equivalent.json")
# top-level folder -> where it lives in the staged src/ tree (setup.py's package_dir, inverted)
PACKAGE_DIRS = {"sdedge": "src/sdedge", "runtime": "src/sdedge/runtime", "common": "src/sdedge/common",
                "export": "src/sdedge/export", "calibrate": "src/sdedge/calibrate"}
SKIP_TOP = ("native", "docs", "deploy", "build", ".ci", ".github")
PYTEST_ARGS = ["-x", "-q", "-p", "no:cacheprovider"]

# tests in the focused files that need the trained tiny bundle (minutes per mutant): left out by -k
REAL_BUNDLE_TESTS = ("session_takes_options_and_keyword_overrides", "each_row_gets_the_answer", "rows_must_share",
                     "waiting_requests_run", "reported_as_they_settle")
# module -> the repository files mutated, the focused test files, and extra pytest arguments (a -k filter)
MODULES: dict[str, dict] = {
    "policies": {"sources": ["runtime/policies.py"],
                 "tests": ["tests/test_policies.py", "tests/test_deadline_policy.py", "tests/test_scheduling.py",
                           "tests/test_mutants_policies.py"],
                 "extra": ["-k", f"not ({' or '.join(REAL_BUNDLE_TESTS)})"]},
    "bundle": {"sources": ["runtime/bundle.py"],
               "tests": ["tests/test_bundle_format.py", "tests/test_mutants_bundle.py"]},
    "manifest": {"sources": ["runtime/manifest.py"],
                 "tests": ["tests/test_bundle_format.py", "tests/test_mutants_manifest.py"]},
    "protocol": {"sources": ["runtime/server/protocol.py"],
                 # test_server.py's pure protocol tests (its server tests need a trained bundle)
                 "tests": ["tests/test_server.py", "tests/test_mutants_protocol.py"],
                 "extra": ["-k", "protocol or request_parameters"]},
    "losses": {"sources": ["sdedge/losses/methods.py", "sdedge/losses/terms.py"],
               # test_losses.py but its training test (it needs the trained tiny checkpoint)
               "tests": ["tests/test_losses.py", "tests/test_mutants_losses.py"],
               "extra": ["-k", "not decreases"]},
    # the session runs on both engines: the C++ core (the installed libsdedge.so) and the trained tiny bundle,
    # built once before the run (``assets``), so its native-engine paths are tested, not just listed
    "session": {"sources": ["runtime/session.py"],
                "tests": ["tests/test_deadline_policy.py", "tests/test_scheduling.py", "tests/test_session_options.py",
                          "tests/test_mutants_session.py", "tests/test_native_engine.py"],
                "assets": ["native", "tiny_bundle"]},
}
ORDER = ["policies", "bundle", "manifest", "protocol", "losses", "session"]


def staged_rel(rel: str) -> str | None:
    top, _, rest = rel.partition("/")
    if top in SKIP_TOP:
        return None
    if top in PACKAGE_DIRS and rest:
        return f"{PACKAGE_DIRS[top]}/{rest}"
    return rel


def working_tree_files() -> list[str]:
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard"],
                         check=True, capture_output=True, text=True).stdout
    return [f for f in out.splitlines() if f and (REPO / f).is_file()]


def stage(dest: Path, name: str, spec: dict) -> None:
    """The staged copy for one module, with mutmut's config (setup.cfg) for it."""
    if dest.exists():
        shutil.rmtree(dest)
    for rel in working_tree_files():
        to = staged_rel(rel)
        if to is None or rel == "setup.py":
            continue
        (dest / to).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / to)
    tests = [t for t in spec["tests"] if (REPO / t).is_file()]
    lines = ["[mutmut]", "source_paths = src/", "only_mutate ="]
    lines += [f"    {staged_rel(s)}" for s in spec["sources"]]
    lines += ["also_copy =", "    pytest.ini", "    benchmarks/", "pytest_add_cli_args ="]
    lines += [f"    {a}" for a in PYTEST_ARGS + spec.get("extra", [])]
    lines += ["pytest_add_cli_args_test_selection ="] + [f"    {t}" for t in tests]
    lines += ["use_git_change_detection = false", ""]
    (dest / "setup.cfg").write_text("\n".join(lines))


COLLECT = r"""
import json, sys
from mutmut.__main__ import walk_mutatable_files, SourceFileMutationData
from mutmut.stats import status_by_exit_code
from mutmut.mutation.diff_apply import get_diff_for_mutant
out = {}
for path in walk_mutatable_files():
    m = SourceFileMutationData(path=path)
    m.load()
    for k, v in m.exit_code_by_key.items():
        st = status_by_exit_code[v]
        out[k] = {"file": str(path), "status": st,
                  "diff": get_diff_for_mutant(k, path=path) if st != "killed" else None}
json.dump(out, sys.stdout)
"""


def mutmut_exe() -> str:
    exe = Path(sys.executable).with_name("mutmut")
    if not exe.exists():
        sys.exit("mutmut is not installed beside this python: pip install 'mutmut>=3,<4'")
    return str(exe)


def all_mutant_names(cwd: Path) -> list[str]:
    """Every mutant's name (``mutmut print-time-estimates`` would run tests; the .meta files do not)."""
    names = []
    for meta in sorted((cwd / "mutants").rglob("*.py.meta")):
        names += list(json.loads(meta.read_text())["exit_code_by_key"])
    return names


def native_library() -> Path:
    """The installed core (``libsdedge.so``) the session module's native-engine tests load; exits if not built."""
    from sdedge import native

    lib = Path(native.library_path())
    if not lib.is_file():
        sys.exit(f"the session module needs the native core ({lib} does not exist): build it with "
                 f"SDEDGE_BUILD_NATIVE=1 pip install -e . first")
    return lib


def tiny_bundle(workdir: Path) -> Path:
    """The tests' tiny bundle, trained and exported once into ``workdir`` (``make_fixture_bundle.py --reuse``)."""
    out = subprocess.run([sys.executable, str(REPO / "native" / "tests" / "make_fixture_bundle.py"),
                          str(workdir / "_assets" / "tiny_bundle"), "--reuse"], check=True, capture_output=True,
                         text=True).stdout
    return Path(out.strip())


def asset_env(spec: dict, workdir: Path) -> dict[str, str]:
    """The environment a module's tests need: the core's path and the prebuilt bundle (see MODULES)."""
    env = {}
    if "native" in spec.get("assets", ()):
        env["SDEDGE_NATIVE_LIBRARY"] = str(native_library())
    if "tiny_bundle" in spec.get("assets", ()):
        env["SDEDGE_TEST_TINY_BUNDLE"] = str(tiny_bundle(workdir))
    return env


def run_module(name: str, spec: dict, workdir: Path, max_children: int, max_mutants: int | None) -> dict:
    cwd = workdir / name
    stage(cwd, name, spec)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", **asset_env(spec, workdir))
    cmd = [mutmut_exe(), "run", "--max-children", str(max_children)]
    t0 = time.time()
    sampled = None
    if max_mutants:
        # generate the mutants and the stats without testing any (a name that matches none), then sample
        subprocess.run(cmd + ["__none__"], cwd=cwd, env=env, capture_output=True, text=True)
        names = all_mutant_names(cwd)
        step = max(1, -(-len(names) // max_mutants))
        sampled = names[::step]
        proc = subprocess.run(cmd + sampled, cwd=cwd, env=env, capture_output=True, text=True)
    else:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.time() - t0
    (workdir / f"{name}.log").write_text(proc.stdout + proc.stderr)
    got = subprocess.run([sys.executable, "-c", COLLECT], cwd=cwd, env=env, capture_output=True, text=True)
    if got.returncode != 0:
        raise RuntimeError(f"collecting mutmut results for {name} failed:\n{got.stderr[-3000:]}\n"
                           f"mutmut run said:\n{(proc.stdout + proc.stderr)[-3000:]}")
    mutants = json.loads(got.stdout)
    if sampled is not None:
        keep = set(sampled)
        mutants = {k: v for k, v in mutants.items() if k in keep}
    return {"mutants": mutants, "seconds": round(elapsed, 1), "mutmut_rc": proc.returncode,
            "sampled": None if sampled is None else len(sampled)}


def changed_lines(diff: str) -> tuple[str, str]:
    """The removed and added source lines of a mutant's diff, whitespace-collapsed, joined by ' / '."""
    rem, add = [], []
    for line in (diff or "").splitlines():
        if line.startswith(("---", "+++")):
            continue
        if line.startswith("-"):
            rem.append(" ".join(line[1:].split()))
        elif line.startswith("+"):
            add.append(" ".join(line[1:].split()))
    return " / ".join(rem), " / ".join(add)


def function_of(mutant: str) -> str:
    """``sdedge.runtime.policies.xǁ_Cellǁskip__mutmut_6`` -> ``_Cell.skip``."""
    last = mutant.split(".")[-1]
    last = re.sub(r"__mutmut_\d+$", "", last)
    if last.startswith("xǁ"):
        return last[2:].replace("ǁ", ".")
    return last[2:] if last.startswith("x_") else last


def load_equivalents() -> list[dict]:
    if not EQUIVALENT_FILE.exists():
        return []
    return json.loads(EQUIVALENT_FILE.read_text())["equivalent"]


def score(name: str, res: dict, equivalents: list[dict]) -> dict:
    eq = [e for e in equivalents if e["module"] == name]
    used = set()
    rows = []
    counts = {"total": 0, "killed": 0, "timeout": 0, "survived": 0, "no_tests": 0, "equivalent": 0, "unreachable": 0,
              "other": 0}
    for key in sorted(res["mutants"], key=_natural):
        m = res["mutants"][key]
        st = m["status"]
        counts["total"] += 1
        if st in ("killed", "caught by type check", "segfault"):
            counts["killed"] += 1
            continue
        if st == "timeout":
            counts["timeout"] += 1
            continue
        src = Path(m["file"]).as_posix()
        fn = function_of(key)
        frm, to = changed_lines(m["diff"])
        match = next((i for i, e in enumerate(eq) if e["function"] == fn and e["from"] == frm and e["to"] == to), None)
        if match is None:  # a whole function judged at once ("from": "*"): unreachable code, e.g. native-only
            match = next((i for i, e in enumerate(eq) if e["function"] == fn and e["from"] == "*"), None)
        row = {"mutant": key, "file": src, "function": fn, "status": st, "from": frm, "to": to}
        if match is not None:
            used.add(match)
            kind = eq[match].get("kind", "equivalent")
            counts[kind] += 1
            row[kind] = eq[match]["reason"]
        elif st == "survived":
            counts["survived"] += 1
        elif st == "no tests":
            counts["no_tests"] += 1
        else:
            counts["other"] += 1
        rows.append(row)
    judged = counts["total"] - counts["equivalent"]
    reachable = judged - counts["unreachable"]
    detected = counts["killed"] + counts["timeout"]
    return {**counts, "score": round(detected / judged, 4) if judged else None,
            "score_reachable": round(detected / reachable, 4) if reachable else None,
            "per_file": _per_file(res["mutants"]), "not_killed": rows,
            "stale_equivalents": [e for i, e in enumerate(eq) if i not in used],
            "seconds": res["seconds"], "sampled": res["sampled"], "mutmut_rc": res["mutmut_rc"]}


def _per_file(mutants: dict) -> dict:
    out: dict[str, dict] = {}
    for m in mutants.values():
        d = out.setdefault(Path(m["file"]).as_posix(), {"total": 0, "not_killed": 0})
        d["total"] += 1
        d["not_killed"] += m["status"] not in ("killed", "timeout", "caught by type check", "segfault")
    return out


def _natural(key: str) -> tuple:
    m = re.search(r"^(.*)__mutmut_(\d+)$", key)
    return (m.group(1), int(m.group(2))) if m else (key, 0)


def commit() -> dict:
    """The commit the mutants were made from, and whether the working tree differed from it."""
    out: dict = {}
    try:
        out["sdedge_commit"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True).stdout
        out["working_tree_dirty"] = bool(dirty.strip())
    except OSError:
        pass
    return out


def markdown(report: dict) -> str:
    L = ["# Mutation testing (issue 17 item 4)", "",
         f"Command: `{report['command']}`  ",
         f"Tool: mutmut {report['versions'].get('mutmut')} (pytest {report['versions'].get('pytest')}, "
         f"numpy {report['versions'].get('numpy')}, onnxruntime {report['versions'].get('onnxruntime')}, "
         f"torch {report['versions'].get('torch')})  ",
         f"Machine: {report['machine']}  ",
         f"Date: {report['date_utc']}  ",
         f"Commit: {report['versions'].get('sdedge_commit')}"
         f"{' (plus uncommitted files in the working tree)' if report['versions'].get('working_tree_dirty') else ''}  ",
         f"Wall time: {report['seconds']} s", "",
         "score = (killed + timeout) / (total - equivalent); goal >= 90 % per module. score (reachable) also leaves "
         "out the surviving mutants this run cannot reach (code that runs only on a GPU or whose effect this "
         "platform cannot show, import-time registration; each listed below with why). Each module runs only its "
         "focused tests (below), so a mutant that a slower suite (trained bundle, live server) would kill can still "
         "count as surviving here.", ""]
    if any(m.get("sampled") for m in report["modules"].values()):
        L += ["**Sampled run**: `--max-mutants-per-module` was set; scores of sampled modules are estimates.", ""]
    L += ["| module | files | total | killed | timeout | survived | no tests | equivalent | unreachable | score | "
          "score (reachable) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f} %"  # noqa: E731
    for name, m in report["modules"].items():
        samp = f" (sample of {m['sampled']})" if m.get("sampled") else ""
        L.append(f"| {name}{samp} | {', '.join(MODULES[name]['sources'])} | {m['total']} | {m['killed']} | "
                 f"{m['timeout']} | {m['survived']} | {m['no_tests']} | {m['equivalent']} | {m['unreachable']} | "
                 f"{pct(m['score'])} | {pct(m['score_reachable'])} |")
    L += ["", "## Focused test commands", ""]
    for name in report["modules"]:
        spec = MODULES[name]
        L.append(f"* {name}: `pytest {' '.join(PYTEST_ARGS + spec['tests'] + _quoted(spec.get('extra', [])))}`")
    L += ["", "## Surviving mutants judged equivalent", "",
          "Reviewed by hand; listed in `benchmarks/mutation_equivalent.json` (keyed by module, function and "
          "the changed line, not by mutmut's number).", ""]
    for name, m in report["modules"].items():
        eq = [r for r in m["not_killed"] if "equivalent" in r]
        if not eq:
            continue
        L += [f"### {name}", ""]
        for r in eq:
            L.append(f"* `{r['function']}`: `{r['from']}` -> `{r['to']}`: {r['equivalent']}")
        L.append("")
    L += ["## Surviving mutants this run cannot reach (not equivalent)", "",
          "Also listed in `benchmarks/mutation_equivalent.json` (`\"kind\": \"unreachable\"`), with why.", ""]
    for name, m in report["modules"].items():
        un = [r for r in m["not_killed"] if "unreachable" in r]
        if not un:
            continue
        L += [f"### {name}", ""]
        groups: dict[tuple[str, str], list[dict]] = {}
        for r in un:
            groups.setdefault((r["function"], r["unreachable"]), []).append(r)
        for (fn, why), rows in groups.items():
            if len(rows) == 1:
                r = rows[0]
                L.append(f"* {r['status']}: `{fn}`: `{r['from']}` -> `{r['to']}`: {why}")
            else:
                L.append(f"* `{fn}`: {len(rows)} mutants ({', '.join(sorted({r['status'] for r in rows}))}): {why}")
        L.append("")
    L += ["## Mutants not killed and not judged equivalent or unreachable", ""]
    any_left = False
    for name, m in report["modules"].items():
        rest = [r for r in m["not_killed"] if "equivalent" not in r and "unreachable" not in r]
        if not rest:
            continue
        any_left = True
        L += [f"### {name}", ""]
        for r in rest:
            L.append(f"* {r['status']}: `{r['function']}`: `{r['from']}` -> `{r['to']}`")
        L.append("")
    if not any_left:
        L += ["None.", ""]
    stale = [(n, e) for n, m in report["modules"].items() for e in m["stale_equivalents"]]
    if stale:
        L += ["## Equivalence entries that matched no surviving mutant (stale or now killed)", ""]
        L += [f"* {n}: `{e['function']}`: `{e['from']}` -> `{e['to']}`" for n, e in stale]
        L.append("")
    return "\n".join(L)


def _quoted(args: list[str]) -> list[str]:
    return [f'"{a}"' if " " in a else a for a in args]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modules", nargs="+", choices=ORDER, default=ORDER)
    p.add_argument("--workdir", help="where the staged copies go (default: a new temporary folder)")
    p.add_argument("--max-children", type=int, default=2, help="mutants tested in parallel")
    p.add_argument("--max-mutants-per-module", type=int, default=None, help="test a deterministic sample only")
    p.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "mutation.json"))
    p.add_argument("--md", default=str(REPO / "benchmarks" / "results" / "mutation.md"))
    a = p.parse_args(argv)
    workdir = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="sdedge-mutation-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if REPO.resolve() in [workdir.resolve(), *workdir.resolve().parents]:
        sys.exit("--workdir must be outside the repository (the staged copies are mutated)")
    equivalents = load_equivalents()
    from sdedge.calibrate.benchmarking import provenance
    from sdedge.common.atomic import write_text_atomic

    header = provenance("benchmarks/mutation.py", argv, ("mutmut", "pytest", "numpy", "onnxruntime", "torch",
                                                         "hypothesis"))
    header["versions"].update(commit())
    t0 = time.time()
    modules = {}
    for name in [m for m in ORDER if m in a.modules]:
        print(f"[mutation] {name} ...", flush=True)
        res = run_module(name, MODULES[name], workdir, a.max_children, a.max_mutants_per_module)
        modules[name] = score(name, res, equivalents)
        m = modules[name]
        print(f"[mutation] {name}: {m['killed']} killed + {m['timeout']} timeout of {m['total']}, "
              f"{m['survived']} survived, {m['no_tests']} no tests, {m['equivalent']} equivalent, "
              f"{m['unreachable']} unreachable: score {m['score']}, reachable {m['score_reachable']} "
              f"({m['seconds']} s)", flush=True)
    report = {**header, "tool": "mutmut", "seconds": round(time.time() - t0, 1),
              "max_mutants_per_module": a.max_mutants_per_module, "pytest_args": PYTEST_ARGS,
              "focused_tests": {n: MODULES[n]["tests"] + MODULES[n].get("extra", []) for n in modules},
              "modules": modules}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(a.json, json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    write_text_atomic(a.md, markdown(report) + "\n")
    print(f"[mutation] wrote {a.json} and {a.md} (staged copies in {workdir})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
