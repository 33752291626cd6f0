"""Shared helpers of the benchmarks: machine description, timing, results files, SD 1.5 LoRA files.

Every benchmark script writes ``results/bN.json`` (numbers, machine, settings) and
``results/bN.md`` (a table and notes, shown by ``book/performance.ipynb``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
KEY_LAYOUT = (
    ROOT.parent / "shared" / "real-loras" / "key-layouts" / "invokeai_stripped__sd1_kohya__shinkai_makoto_offset.json"
)


def parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes (seconds): checks the script, not the machine")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (median reported)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for bN.json and bN.md")
    p.add_argument("--tmp", type=Path, default=None, help="folder for temporary files (default: the system's)")
    return p


def machine() -> dict:
    """CPU, cores, memory, versions, date, and whether other heavy work was running."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            mem_kb = int(next(line for line in fh if line.startswith("MemTotal")).split()[1])
    except (OSError, StopIteration):
        mem_kb = 0
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("torch", "scipy", "sklearn", "faiss"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - a missing package is reported, not fatal
            versions[name] = "absent"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kb / 2**20, 1),
        "os": f"{platform.system()} {platform.release()}",
        "versions": versions,
        "threads": {k: os.environ.get(k, "unset") for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load": other_load(),
    }


def _stopped(pid: str) -> bool:
    """Whether a process is stopped (SIGSTOP: a build paused while a benchmark runs does not share the machine)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except (OSError, IndexError):
        return False


def other_load() -> str:
    """A note of what shared the machine: a collection build or a test run, and the load average."""
    others = []
    for pattern, what in (
        ("lorastyle.collection.build", "a `lorastyle.collection.build` training job"),
        ("pytest", "a pytest run"),
    ):
        try:
            out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
        except OSError:
            return "unknown"
        running = [pid for pid in out if int(pid) != os.getpid() and not _stopped(pid)]
        if running:
            others.append(what)
    load = f"1-minute load average {os.getloadavg()[0]:.1f} at the end"
    if others:
        return f"shared: {' and '.join(others)} ran at the same time; {load}"
    return f"no other heavy job known; {load}"


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of ``fn`` over ``repeats`` runs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def fmt(x: float, digits: int = 3) -> str:
    """A number with ``digits`` significant digits, thousands separated."""
    if x == 0 or not np.isfinite(x):
        return str(x)
    mag = int(np.floor(np.log10(abs(x))))
    decimals = max(0, digits - 1 - mag)
    return f"{x:,.{decimals}f}"


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(m: dict) -> str:
    v = m["versions"]
    return (
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, {m['os']}; Python {v['python']}, "
        f"torch {v['torch']}, numpy {v['numpy']}, scikit-learn {v['sklearn']}, faiss {v['faiss']}; "
        f"OMP_NUM_THREADS={m['threads']['OMP_NUM_THREADS']}; {m['date']}. Load: {m['load']}."
    )


def write_results(name: str, title: str, data: dict, body: str, out: Path, quick: bool) -> None:
    """Write ``out/name.json`` and ``out/name.md`` (title, machine line, body)."""
    out.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "title": title, "quick": quick, "machine": machine(), **data}
    (out / f"{name}.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    mode = " (quick mode: small sizes, not the reported run)" if quick else ""
    md = f"### {name.upper()}: {title}{mode}\n\n{body.strip()}\n\n{machine_line(data['machine'])}\n"
    (out / f"{name}.md").write_text(md)
    print(md)


# ---------------------------------------------------------------------------
# SD 1.5 kohya LoRA files of real layout, random weights


def _sd15_rule_modules() -> list[tuple[str, int, int, bool]]:
    """(kohya module key, in, out, conv 1x1) of an SD 1.5 kohya LoRA (U-Net transformers + CLIP text encoder)."""
    mods = []
    for layer in range(12):
        pre = f"lora_te_text_model_encoder_layers_{layer}_"
        for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
            mods.append((pre + f"self_attn_{p}", 768, 768, False))
        mods += [(pre + "mlp_fc1", 768, 3072, False), (pre + "mlp_fc2", 3072, 768, False)]
    blocks = (
        [(f"down_blocks_{b}_attentions_{a}", c) for b, c in enumerate((320, 640, 1280)) for a in range(2)]
        + [("mid_block_attentions_0", 1280)]
        + [(f"up_blocks_{b}_attentions_{a}", c) for b, c in ((1, 1280), (2, 640), (3, 320)) for a in range(3)]
    )
    for block, c in blocks:
        pre = f"lora_unet_{block}_"
        mods += [(pre + "proj_in", c, c, True), (pre + "proj_out", c, c, True)]
        t = pre + "transformer_blocks_0_"
        for attn in ("attn1", "attn2"):
            for p in ("to_q", "to_k", "to_v", "to_out_0"):
                cin = 768 if attn == "attn2" and p in ("to_k", "to_v") else c
                mods.append((t + f"{attn}_{p}", cin, c, False))
        mods += [(t + "ff_net_0_proj", c, 8 * c, False), (t + "ff_net_2", 4 * c, c, False)]
    return sorted(mods)


def sd15_modules(layout: Path | None = KEY_LAYOUT) -> tuple[list[tuple[str, int, int, bool]], str]:
    """SD 1.5 kohya modules from the real key layout when present, else from the naming rules.

    Returns the modules and where they came from. The rules give the same 264 modules as the
    real file (``tests/test_benchmarks.py`` checks it where the layout is present).
    """
    if layout is not None and Path(layout).exists():
        keys = json.loads(Path(layout).read_text())["keys"]
        mods = []
        for key, info in keys.items():
            if key.endswith(".lora_down.weight"):
                name = key[: -len(".lora_down.weight")]
                down, up = info["shape"], keys[f"{name}.lora_up.weight"]["shape"]
                mods.append((name, int(np.prod(down[1:])), int(up[0]), len(down) == 4))
        return sorted(mods), f"key layout {Path(layout).name}"
    return _sd15_rule_modules(), "kohya naming rules (key layout absent)"


def write_sd15_lora(path: Path, modules, rank: int, seed: int, alpha: float | None = None) -> int:
    """One fp16 kohya LoRA file of SD 1.5 layout with random weights; returns its size in bytes."""
    from lorastyle.io.safetensors import write_safetensors

    rng = np.random.default_rng(seed)
    tensors = {}
    for name, cin, cout, conv in modules:
        down = (0.02 * rng.standard_normal((rank, cin), dtype=np.float32)).astype(np.float16)
        up = (0.02 * rng.standard_normal((cout, rank), dtype=np.float32)).astype(np.float16)
        tensors[f"{name}.lora_down.weight"] = down.reshape(rank, cin, 1, 1) if conv else down
        tensors[f"{name}.lora_up.weight"] = up.reshape(cout, rank, 1, 1) if conv else up
        tensors[f"{name}.alpha"] = np.asarray(alpha if alpha is not None else rank, dtype=np.float16)
    write_safetensors(path, tensors, {"ss_network_dim": str(rank), "ss_base_model_version": "sd_v1"})
    return path.stat().st_size


def peak_rss_mb_of(cmd: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """Run a command; return (its peak resident memory in MB, wall seconds, last stderr line).

    The command runs under a fresh Python parent whose only child it is, so that the
    parent's ``RUSAGE_CHILDREN`` peak is this command's alone.
    """
    probe = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); w = time.perf_counter() - t; "
        "sys.stderr.write(p.stderr); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, w, p.returncode)"
    )
    proc = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True, env=env)
    peak, wall, rc = proc.stdout.split()
    if int(rc) != 0 or proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({rc}): {proc.stderr[-2000:]}")
    return float(peak), float(wall), proc.stderr.strip().split("\n")[-1]


def python() -> str:
    return sys.executable
