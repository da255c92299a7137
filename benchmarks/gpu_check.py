"""The GPU check: strata's CUDA paths in one short run, ready before a GPU is lent.

Parts, each timed and reported whether it ran, was skipped (and why) or failed:

* cuda_tests:  ``pytest -m cuda`` over the test files that hold tests marked ``cuda``
* cora:        Cora GCN and GAT through ``strata train`` (the device is CUDA where torch sees
               one, as the CLI chooses it), test accuracy against the README's
* minibatch:   one minibatch epoch (GraphSAGE, fanouts 10,10) on a synthetic store (2M nodes),
               features through the tiered store (device tier on the GPU) and the device feed,
               against the same epoch on the path before the feed (features assembled on the
               host, each batch copied when it is trained); samples/s and H2D overlap (share of
               copy time hidden behind compute)
* kernels:     ``benchmarks/kernels.py`` (torch's CUDA kernels against DGL's CPU ones)
* dit:         200 steps of the digits DiT (examples/digits_dit.yaml) in bf16

Without CUDA every part runs its CPU fallback at small sizes (``--small``) and the summary
says which GPU figures are missing and why. Writes ``gpu_check.json`` (report.py's shape:
per-part figures under ``methods``, named ``ratios``) and ``summary.md`` into ``--out``.

    bash benchmarks/gpu_check.sh OUT_DIR [--small]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from report import ratio, write_report

REPO = Path(__file__).resolve().parents[1]
PARTS = ("cuda_tests", "cora", "kernels", "dit", "minibatch")
"""In the order they run: the one that writes a 2M-node store last."""
INTERRUPTED = "interrupted at the check's time limit (gpu_check.sh)"
README_ACCURACY = {"gcn": 0.818, "gat": 0.829}
"""Cora test accuracy in the README (mean of 5 seeds); one seed on the GPU must come within 2 points."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"), help="directory for the JSON and the summary")
    p.add_argument("--small", action="store_true", help="small sizes (the CPU fallback: minutes on 2 cores)")
    p.add_argument("--parts", default=",".join(PARTS), help="comma list of parts to run")
    p.add_argument("--planetoid", default=str(REPO.parent / "shared" / "data" / "planetoid"),
                   help="folder of the Planetoid Cora files (ind.cora.*)")
    p.add_argument("--nodes", type=int, default=0, help="nodes of the minibatch store (default 2M, 20k with --small)")
    p.add_argument("--part-timeout", type=float, default=240.0, help="seconds any one command may take")
    args = p.parse_args(argv)
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        p.error(f"--parts: unknown {sorted(unknown)}; choose from {', '.join(PARTS)}")
    args.nodes = args.nodes or (20_000 if args.small else 2_000_000)
    return args


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run(cmd: list[str], timeout: float, log: Path) -> subprocess.CompletedProcess:
    """Run ``cmd`` from the repository root, its output kept in ``log``; raise on failure."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    print(f"$ {' '.join(cmd)}", flush=True)
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    log.write_text(f"$ {' '.join(cmd)}\n{out.stdout}\n{out.stderr}")
    if out.returncode != 0:
        tail = (out.stdout + out.stderr)[-1500:]
        raise RuntimeError(f"'{' '.join(cmd[:4])} ...' exited with {out.returncode} (log: {log}):\n{tail}")
    return out


def strata(*args: str) -> list[str]:
    return [sys.executable, "-m", "strata.launch.cli", *args]


def last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError("the command printed no JSON result")


# -- parts -------------------------------------------------------------------------------------


def part_cuda_tests(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    files = sorted({str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py")
                    if re.search(r"mark\.cuda\b", p.read_text(encoding="utf-8"))})
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider", *files],
                          cwd=REPO, capture_output=True, text=True, timeout=args.part_timeout)
    (out / "cuda_tests.log").write_text(proc.stdout + proc.stderr)
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|error|deselected)", proc.stdout)}
    reasons = sorted(set(re.findall(r"SKIPPED \[\d+\] [^:]+:\d+: (.*)", proc.stdout)))
    if proc.returncode not in (0, 5) or counts.get("failed") or counts.get("error"):
        raise RuntimeError(f"pytest -m cuda: {counts} (log: {out / 'cuda_tests.log'})")
    figures = {"files": files, **counts}
    if not counts.get("passed"):
        return {"status": "skipped", "reason": "; ".join(reasons) or "no test ran", "figures": figures}
    return {"status": "ran", "figures": figures}


def part_cora(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    planetoid = Path(args.planetoid)
    if not (planetoid / "ind.cora.x").exists():
        return {"status": "skipped", "reason": f"Cora is not at {planetoid} (pass --planetoid)"}
    store = out / "stores" / "cora"
    if not store.exists():
        run(strata("ingest", "planetoid", str(planetoid), "--name", "cora", "--out", str(store), "-q"),
            args.part_timeout, out / "cora_ingest.log")
    figures: dict[str, Any] = {}
    for model in ("gcn", "gat"):
        sets = ["--set", f"data.store={store}", "--set", f"run_dir={out / 'runs' / ('cora_' + model)}"]
        if args.small:
            sets += ["--set", "train.epochs=5"]
        t0 = time.perf_counter()
        proc = run(strata("train", str(REPO / "examples" / f"cora_{model}.yaml"), *sets, "--overwrite", "--json", "-q"),
                   args.part_timeout, out / f"cora_{model}.log")
        result = last_json(proc.stdout)
        figures[model] = {"test_acc": result["test_acc"], "val_acc": result["val_acc"], "epochs": result["epochs"],
                          "train_seconds": result["train_seconds"], "wall_seconds": time.perf_counter() - t0,
                          "readme_test_acc": README_ACCURACY[model],
                          "accuracy_ok": None if args.small else result["test_acc"] >= README_ACCURACY[model] - 0.02}
    note = "5 epochs (--small): accuracy not comparable with the README" if args.small else ""
    return {"status": "ran", "figures": figures, "note": note}


def part_minibatch(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from feed_epoch import EpochSpec, compare_epochs

    spec = EpochSpec(nodes=args.nodes, feat_dim=32 if args.small else 64, batch_size=256 if args.small else 1024,
                     store=str(out / "stores" / f"syn_{args.nodes}"))
    figures = compare_epochs(spec)
    return {"status": "ran", "figures": figures,
            "note": "" if figures["device"].startswith("cuda") else "CPU: the feed passes batches through (no copies to time)"}


def part_kernels(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    if args.small:
        flags = ["--nodes", "20000", "--repeats", "2", "--methods", "dgl_cpu,torch_cpu,torch_cuda"]
    else:
        flags = ["--nodes", "200000,2000000", "--repeats", "3", "--threads", str(min(8, os.cpu_count() or 1)),
                 "--methods", "dgl_cpu,torch_cuda"]
    report = out / "kernels.json"
    run([sys.executable, str(REPO / "benchmarks" / "kernels.py"), *flags, "--json", str(report)], args.part_timeout,
        out / "kernels.log")
    data = json.loads(report.read_text())
    cuda_ratios = {k: v for k, v in data["ratios"].items() if k.startswith("torch_cuda_over_dgl_cpu") and not k.endswith("_first")}
    return {"status": "ran", "figures": {"methods": ",".join(sorted(data["methods"])), "ratios": data["ratios"],
                                         "cuda_ratios": len(cuda_ratios), "report": str(report)}}


def part_dit(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    store = out / "stores" / "digits"
    if not store.exists():
        run(strata("ingest", "digits", "--out", str(store), "-q"), args.part_timeout, out / "dit_ingest.log")
    cuda = has_cuda()
    small = args.small and not cuda
    steps, precision = (10, "fp32") if small else (200, "bf16")
    sets = ["--set", f"data.store={store}", "--set", f"run_dir={out / 'runs' / 'digits_dit'}",
            *(["--set", "diffusion.batch_size=32"] if small else []),
            "--set", f"diffusion.steps={steps}", "--set", f"diffusion.precision={precision}",
            "--set", "diffusion.warmup_steps=10", "--set", "diffusion.sample_per_class=1", "--set", "diffusion.sample_steps=5"]
    t0 = time.perf_counter()
    proc = run(strata("train", str(REPO / "examples" / "digits_dit.yaml"), *sets, "--overwrite", "--json", "-q"),
               args.part_timeout, out / "dit.log")
    result = last_json(proc.stdout)
    wall = time.perf_counter() - t0
    keep = {k: v for k, v in result.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    note = "" if cuda else f"CPU: {steps} steps in {precision}" + (", batch 32" if small else "") + " (bf16 runs on CUDA)"
    return {"status": "ran", "figures": {"steps": steps, "precision": precision, "wall_seconds": wall, **keep}, "note": note}


PART_RUNNERS: dict[str, Callable[[argparse.Namespace, Path], dict[str, Any]]] = {
    "cuda_tests": part_cuda_tests, "cora": part_cora, "minibatch": part_minibatch, "kernels": part_kernels, "dit": part_dit,
}


# -- report ------------------------------------------------------------------------------------


def ratios_of(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    mini = results.get("minibatch", {}).get("figures", {})
    fed, plain = mini.get("fed", {}), mini.get("plain", {})
    return {
        "fed_over_plain_samples_per_second": ratio(fed.get("samples_per_second", 0.0), plain.get("samples_per_second", 0.0)),
        "fed_h2d_overlap": fed.get("h2d_overlap"),
    }


def summary(results: dict[str, dict[str, Any]], context: dict[str, Any]) -> str:
    lines = [f"# GPU check ({context['device']})", "",
             f"{context['when']}; torch {context['torch']}; {'small sizes' if context['small'] else 'full sizes'}", "",
             "| part | status | seconds | figures / reason |", "| --- | --- | ---: | --- |"]
    for name, res in results.items():
        text = res.get("reason", "") or short(res.get("figures", {}))
        if res.get("note"):
            text += f" ({res['note']})"
        lines.append(f"| {name} | {res['status']} | {res.get('seconds', 0):.1f} | {text} |")
    missing = [name for name, res in results.items() if res["status"] != "ran" or not context["cuda"]]
    if missing:
        lines += ["", "Not measured on a GPU here: " + ", ".join(missing)
                  + ("" if context["cuda"] else " (torch sees no CUDA device: CPU fallbacks ran instead)") + "."]
    return "\n".join(lines) + "\n"


def short(figures: dict[str, Any]) -> str:
    """The figures a reader looks for first, as one cell."""
    parts = []
    for key, value in figures.items():
        if isinstance(value, dict):
            inner = ", ".join(f"{k} {fmt(v)}" for k, v in value.items()
                              if k in ("test_acc", "samples_per_second", "h2d_overlap", "device_rows", "epoch_seconds"))
            if inner:
                parts.append(f"{key}: {inner}")
        elif key in ("passed", "skipped", "steps", "wall_seconds", "device", "methods", "cuda_ratios", "max_loss_diff"):
            parts.append(f"{key} {fmt(value)}")
    return "; ".join(parts)


def fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    import torch

    cuda = torch.cuda.is_available()
    context = {"cuda": cuda, "device": torch.cuda.get_device_name(0) if cuda else "no CUDA device (CPU fallbacks)",
               "torch": torch.__version__, "small": args.small, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    results: dict[str, dict[str, Any]] = {}
    for name in [part for part in PARTS if part in args.parts.split(",")]:
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            res = PART_RUNNERS[name](args, out)
        except KeyboardInterrupt:  # the script's time limit (gpu_check.sh): keep what ran
            res = {"status": "failed", "reason": INTERRUPTED}
        except Exception as exc:  # one part failing must not hide the others' figures
            res = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
        res["seconds"] = time.perf_counter() - t0
        results[name] = res
        print(f"   {res['status']} in {res['seconds']:.1f} s {res.get('reason', '')}", flush=True)
        text = write_all(out, args, results, context)  # after every part: a cut-off run keeps its figures
        if res.get("reason") == INTERRUPTED:
            break
    print(text)
    return 1 if any(r["status"] == "failed" for r in results.values()) else 0


def write_all(out: Path, args: argparse.Namespace, results: dict[str, dict[str, Any]], context: dict[str, Any]) -> str:
    context["skipped"] = {n: r.get("reason", "") for n, r in results.items() if r["status"] == "skipped"}
    write_report(out / "gpu_check.json", "gpu_check", args, results, ratios_of(results), context)
    text = summary(results, context)
    (out / "summary.md").write_text(text)
    return text


if __name__ == "__main__":
    sys.exit(main())
