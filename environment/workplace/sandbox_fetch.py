"""Fetch the reference sandbox databases (NeMo-Gym's ``csv_data``) into the download cache.

Why: rewards are only comparable with NeMo-Gym's when the tools run on byte-identical databases.
The files are taken from the pinned ``nemo-gym`` wheel on PyPI (Apache-2.0) and every extracted file
is checked against a sha256 pinned here, so a changed upstream file or a corrupted download fails
loudly instead of silently shifting rewards.

Layout written (what ``WorkplaceEnv`` loads)::

    <cache>/workplace_assistant/csv_data/
        processed/{analytics_data,calendar_events,customer_relationship_manager_data,emails,project_tasks}.csv
        raw/{email_addresses,events}.csv
        manifest.json        where the files came from and their sha256 (checked on every later run)

Imports no torch (runs on CPU-only login nodes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

NEMO_GYM_VERSION = "0.7.0"
WHEEL_NAME = f"nemo_gym-{NEMO_GYM_VERSION}-py3-none-any.whl"
WHEEL_URL = (
    "https://files.pythonhosted.org/packages/6c/bc/"
    "961a0a2e373c3eef49e53ec0216f93c4ade66b5e610cacdff43886d9bb18/" + WHEEL_NAME
)
WHEEL_SHA256 = "cce78fc3fd048f36b4c465fe8e9fe3cc5e7afb6f6e287bfe831f156988508a70"
WHEEL_CSV_PREFIX = "resources_servers/workplace_assistant/csv_data/"

# sha256 of every file under csv_data in nemo-gym 0.7.0 (relative path -> digest).
CSV_SHA256: dict[str, str] = {
    "processed/analytics_data.csv": "4a0df10aabc07980f1cc074dc9ab36406ce98dead7e14fe11f72a9f1ba788688",
    "processed/calendar_events.csv": "6c9df1872d54d0b0d068d1b066766a8ddbc29c3933f1d56c9efd554926312295",
    "processed/customer_relationship_manager_data.csv": (
        "599057e4eec3a7c25ac04b4d655ea2c034b7b7782205dc367a28122756e04c41"
    ),
    "processed/emails.csv": "1809e341a0e4f1fd78cf1b759964a42abd28db8c9b9dca364456efc31f82bb31",
    "processed/project_tasks.csv": "fa0c05d5609f49e905342bd12592b09f23eff6147dcf607b808703f45ddbeaeb",
    "raw/email_addresses.csv": "1f3465b92eb41b90a973a9b00f35757a23d16839652b5e352e9d217d8e404b0b",
    "raw/events.csv": "04ba8c0dddd619bce9683dd3f2565dc0f83ef7ebc07699b62391171df497b548",
}
# What the tools read; a --sandbox folder must have at least these.
REQUIRED_FILES = (
    "processed/analytics_data.csv",
    "processed/calendar_events.csv",
    "processed/customer_relationship_manager_data.csv",
    "processed/emails.csv",
    "processed/project_tasks.csv",
    "raw/email_addresses.csv",
)
MANIFEST = "manifest.json"
PIP_HINT = (
    f"pip download nemo-gym=={NEMO_GYM_VERSION} --no-deps --only-binary=:all: --python-version 3.13.14 -d DIR"
)


class SandboxError(RuntimeError):
    """The sandbox could not be fetched or is not intact; the message says what to do instead."""


def default_sandbox_dir() -> Path:
    """``<cache>/workplace_assistant/csv_data``; cache: ``$MEGATRON_GRPO_CACHE`` or ~/.cache/megatron_grpo."""
    from environment.workplace.data_dir import cache_dir

    return Path(cache_dir()) / "workplace_assistant" / "csv_data"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_wheel(
    dest_dir: Path, url: str = WHEEL_URL, sha256: str | None = WHEEL_SHA256, progress: bool = True
) -> Path:
    """Download the nemo-gym wheel into ``dest_dir`` (showing progress) and check its sha256.

    Raises SandboxError naming the offline alternatives when the download fails.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / url.rsplit("/", 1)[-1]
    partial = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with _progress_bar(f"nemo-gym {NEMO_GYM_VERSION} wheel", total, enabled=progress) as advance:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    advance(len(chunk))
    except (urllib.error.URLError, OSError) as e:
        partial.unlink(missing_ok=True)
        raise SandboxError(
            f"could not download {url}: {e}.\n"
            f"Offline? Fetch the wheel elsewhere ({PIP_HINT}) and pass --wheel PATH, "
            "or pass --sandbox PATH (a csv_data folder with processed/*.csv and raw/email_addresses.csv)."
        ) from e
    if sha256 is not None and digest.hexdigest() != sha256:
        partial.unlink(missing_ok=True)
        raise SandboxError(
            f"{url}: sha256 {digest.hexdigest()} does not match the pinned {sha256}; "
            "the download is corrupted or the file changed upstream. "
            "Retry, or pass --wheel PATH / --sandbox PATH."
        )
    partial.replace(target)
    return target


def extract_csv_data(wheel: Path, dest: Path, source: str | None = None) -> Path:
    """Extract ``csv_data`` from a nemo-gym wheel into ``dest``, checking each file's pinned sha256.

    ``dest`` is replaced atomically: a failed check leaves any previous ``dest`` untouched.
    """
    wheel, dest = Path(wheel), Path(dest)
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as e:
        raise SandboxError(f"{wheel}: not a readable wheel ({e}); pass --sandbox PATH instead") from e
    staging = _staging_dir(dest)
    try:
        with archive:
            names = set(archive.namelist())
            for rel, expected in CSV_SHA256.items():
                member = WHEEL_CSV_PREFIX + rel
                if member not in names:
                    raise SandboxError(
                        f"{wheel}: {member} is missing; is this the nemo-gym {NEMO_GYM_VERSION} wheel?"
                    )
                data = archive.read(member)
                got = hashlib.sha256(data).hexdigest()
                if got != expected:
                    raise SandboxError(
                        f"{wheel}: {rel} fails the sha256 check (expected {expected}, got {got}); "
                        f"the wheel is corrupted or not nemo-gym {NEMO_GYM_VERSION}. "
                        "Delete it and download again, or pass --sandbox PATH."
                    )
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                (staging / rel).write_bytes(data)
        _write_manifest(staging, source=source or str(wheel.resolve()), files=CSV_SHA256)
        _replace_dir(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def copy_sandbox(src: Path, dest: Path) -> Path:
    """Copy a local csv_data folder (NeMo-Gym's, or WorkBench's ``data/``) into ``dest``.

    Files are not required to match NeMo-Gym's hashes (a WorkBench sandbox differs on purpose), but a
    note is printed when they do not, because rewards then differ from the reference's.
    """
    src, dest = Path(src), Path(dest)
    missing = [rel for rel in REQUIRED_FILES if not (src / rel).is_file()]
    if missing:
        raise SandboxError(
            f"--sandbox {src}: not a csv_data folder, missing {', '.join(missing)} "
            "(expected processed/*.csv and raw/email_addresses.csv)"
        )
    staging = _staging_dir(dest)
    try:
        files = {}
        for rel in sorted(set(REQUIRED_FILES) | set(CSV_SHA256)):
            if not (src / rel).is_file():
                continue
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rel, staging / rel)
            files[rel] = sha256_file(staging / rel)
        differing = [rel for rel, digest in files.items() if CSV_SHA256.get(rel) != digest]
        if differing:
            print(
                f"note: {src} differs from NeMo-Gym {NEMO_GYM_VERSION}'s sandbox in {', '.join(differing)}; "
                "rewards will not match the reference's on this data.",
                file=sys.stderr,
            )
        _write_manifest(staging, source=str(src.resolve()), files=files)
        _replace_dir(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def check_sandbox(dest: Path) -> list[str]:
    """Problems with an installed sandbox (missing files, sha256 not as in its manifest); [] if intact."""
    dest = Path(dest)
    manifest_path = dest / MANIFEST
    if not manifest_path.is_file():
        return [f"{manifest_path} is missing"]
    try:
        files = json.loads(manifest_path.read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:
        return [f"{manifest_path} is unreadable ({e})"]
    problems = []
    for rel in REQUIRED_FILES:
        if rel not in files:
            problems.append(f"{dest / rel} is not in the manifest")
    for rel, expected in files.items():
        path = dest / rel
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif (got := sha256_file(path)) != expected:
            problems.append(f"{path} fails the sha256 check (expected {expected}, got {got})")
    return problems


def fetch_sandbox(
    dest: Path | None = None,
    *,
    wheel: Path | None = None,
    sandbox: Path | None = None,
    url: str = WHEEL_URL,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Install the sandbox into ``dest`` (default: the cache) unless an intact one is already there.

    Source, in order: ``sandbox`` (a local csv_data folder), ``wheel`` (a local nemo-gym wheel), else the
    pinned wheel downloaded from PyPI. An installed sandbox that fails its check raises unless ``force``.
    """
    dest = Path(dest) if dest is not None else default_sandbox_dir()
    if dest.exists() and not force:
        problems = check_sandbox(dest)
        if not problems:
            print(f"sandbox present at {dest}, skipping (--force to fetch again)")
            return dest
        raise SandboxError(
            f"sandbox at {dest} is not intact:\n  "
            + "\n  ".join(problems)
            + "\nRerun with --force to replace it."
        )
    if sandbox is not None:
        copy_sandbox(sandbox, dest)
    elif wheel is not None:
        extract_csv_data(wheel, dest)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".wheel-") as tmp:
            extract_csv_data(download_wheel(Path(tmp), url=url, progress=progress), dest, source=url)
    print(f"sandbox written to {dest}")
    return dest


def _staging_dir(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-"))
    staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the sandbox is shared data
    return staging


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace_dir(staging: Path, dest: Path) -> None:
    """Swap ``staging`` in as ``dest`` (the old one is removed only after the new one is complete)."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}-old-{os.getpid()}")
        dest.rename(old)
    staging.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_manifest(root: Path, *, source: str, files: dict[str, str]) -> None:
    payload = {"source": source, "nemo_gym_version": NEMO_GYM_VERSION, "files": dict(sorted(files.items()))}
    (root / MANIFEST).write_text(json.dumps(payload, indent=2) + "\n")


class _progress_bar:
    """A rich download bar (a no-op when disabled); ``with`` yields ``advance(n_bytes)``."""

    def __init__(self, label: str, total: int | None, enabled: bool):
        self.label, self.total, self.enabled, self._progress = label, total, enabled, None

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            transient=False,
        )
        self._progress.start()
        task = self._progress.add_task(self.label, total=self.total)
        return lambda n: self._progress.advance(task, n)

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()
        return False


def main(argv: list[str] | None = None) -> int:
    """``python -m environment.workplace.sandbox_fetch [--dest DIR] [--wheel PATH | --sandbox PATH]``."""
    parser = argparse.ArgumentParser(prog="sandbox_fetch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=None, help="target csv_data dir (default: the cache)")
    parser.add_argument("--wheel", type=Path, default=None, help=f"a local {WHEEL_NAME} instead of PyPI")
    parser.add_argument("--sandbox", type=Path, default=None, help="copy a local csv_data folder instead")
    parser.add_argument("--wheel-url", default=WHEEL_URL, help="wheel URL (a PyPI mirror)")
    parser.add_argument("--force", action="store_true", help="replace an existing sandbox")
    args = parser.parse_args(argv)
    try:
        fetch_sandbox(args.dest, wheel=args.wheel, sandbox=args.sandbox, url=args.wheel_url, force=args.force)
    except SandboxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
