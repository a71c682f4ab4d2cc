"""Build the worker image with a real OCI builder: Docker where an engine runs, else podman.

Used by `scripts/deploycheck/image.py` (the `image` step of `make check-deploy`). Without a Docker
engine, everything comes from Debian's packages (`scripts/install-podman`): the base image is a
debootstrapped bookworm with Debian's Python 3.11 (the public image registry may be out of
reach), cached in podman's store under a tag that names its recipe, so a rerun skips it. The
Dockerfile itself is built unchanged, with only `--build-arg PYTHON_IMAGE` pointing at that base.
This machine's egress re-signs TLS, so the host's CA bundle and a pip.conf naming it are mounted
for the build's RUN steps only; the image keeps neither
(`check_image` verifies it; buildah leaves an empty /etc/pip.conf where it mounted it).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/careershaper-worker:check-deploy"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
# buildah leaves an empty file where it mounted this for RUN steps; check_image checks it is empty.
BUILD_PIP_CONF = "/etc/pip.conf"
# What the Dockerfile's python:3.11-slim-bookworm gives it: Python 3.11 with venv, CA roots,
# and groupadd/useradd (from `passwd`, which minbase has).
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
TRIMMED = ("var/lib/apt/lists", "var/cache/apt", "usr/share/doc", "usr/share/man",
           "usr/share/locale", "usr/share/info")  # fmt: skip
# How podman must run containers here: crun fails on this machine's cgroup mode, and the default
# rlimits need a capability the VM lacks.
# Its HEALTHCHECK timers need systemd, which is not running here (check_image execs the command).
PODMAN_RUN = ("--runtime", "runc", "--ulimit", "nofile=16384:16384", "--ulimit", "nproc=4096:4096",
              "--no-healthcheck")  # fmt: skip
BASE_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8")


def say(message: str) -> None:
    print(f"  {message}", flush=True)


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure, raise with the end of its output."""
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]  # noqa: S603
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-3000:]
        raise SystemExit(f"{' '.join(argv[:4])} ... exited {result.returncode}:\n{output}")
    return result  # type: ignore[no-any-return]


def pick_builder() -> str:
    """`docker` when its engine answers, otherwise `podman` (installed from Debian if missing)."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "info"], capture_output=True, timeout=20)  # noqa: S607
        if probe.returncode == 0:
            return "docker"
    run([str(ROOT / "scripts/install-podman")])
    return "podman"


def debian_mirror() -> str:
    """The Debian mirror apt uses here (deb822 or one-line sources), else deb.debian.org."""
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in [*sources, Path("/etc/apt/sources.list")]:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        found = re.findall(r"^URIs:\s*(\S+)", text, re.M) + re.findall(
            r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+", text, re.M
        )
        for uri in found:
            if uri.rstrip("/").endswith("/debian"):
                return uri
    return "http://deb.debian.org/debian"


def python_version() -> str:
    """The Python version of the Dockerfile's base image (ARG PYTHON_IMAGE=python:3.11-...)."""
    match = re.search(
        r"^ARG PYTHON_IMAGE=python:(\d+\.\d+)", (ROOT / "Dockerfile").read_text(), re.M
    )
    if not match:
        raise SystemExit("cannot read the Python version from ARG PYTHON_IMAGE in the Dockerfile")
    return match.group(1)


def base_tag() -> str:
    """The cached base's tag: its recipe's hash, so a changed recipe makes a new base."""
    recipe = json.dumps([BASE_PACKAGES, TRIMMED, BASE_ENV, "bookworm", "minbase"])
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    return f"localhost/cs-debian-python:{python_version()}-bookworm-{digest}"


def ensure_base(cache: Path) -> str:
    """A podman image equivalent to python:3.11-slim-bookworm, made from Debian's packages."""
    tag = base_tag()
    if subprocess.run(["podman", "image", "exists", tag]).returncode == 0:  # noqa: S607
        say(f"base {tag} (cached)")
        return tag
    started = time.monotonic()
    for stale in run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}"]).stdout.split():
        if stale.startswith("localhost/cs-debian-python:"):
            subprocess.run(["podman", "rmi", "--force", stale], capture_output=True)  # noqa: S607
    rootfs = cache / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    mirror = debian_mirror()
    say(f"debootstrap bookworm minbase from {mirror} (once; cached as {tag})")
    run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", "bookworm",
         str(rootfs), mirror])  # fmt: skip
    for path in TRIMMED:
        target = rootfs / path
        if target.is_dir():
            shutil.rmtree(target)
            target.mkdir()
    changes = [arg for env in BASE_ENV for arg in ("--change", f"ENV {env}")]
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)  # noqa: S607
    run(["podman", "import", *changes, "-", tag], stdin=tar.stdout)
    tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)
    version = "import sys; print('%d.%d' % sys.version_info[:2])"
    probe = subprocess.run(["podman", "run", "--rm", *PODMAN_RUN, tag, "python", "-c", version],  # noqa: S607
                           capture_output=True, text=True)  # fmt: skip
    got = probe.stdout.strip()
    if got != python_version():
        subprocess.run(["podman", "rmi", "--force", tag], capture_output=True)  # noqa: S607
        raise SystemExit(f"the Debian base runs Python {got!r} ({probe.stderr.strip()[-500:]}), "
                         f"the Dockerfile wants {python_version()}")  # fmt: skip
    say(f"base {tag}: Python {got} ({time.monotonic() - started:.0f} s)")
    return tag


def build(builder: str, cache: Path) -> str:
    """Build the Dockerfile as is; returns the image's tag."""
    started = time.monotonic()
    previous = image_id(builder, IMAGE)
    if builder == "docker":
        run(["docker", "build", "--tag", IMAGE, str(ROOT)])
    else:
        base = ensure_base(cache)
        with tempfile.TemporaryDirectory(prefix="cs-build-") as scratch:
            pip_conf = Path(scratch) / "pip.conf"
            pip_conf.write_text(f"[global]\ncert = {HOST_CA}\n")
            mounts = [f"--volume={pip_conf}:{BUILD_PIP_CONF}:ro"]
            if HOST_CA.is_file():  # over the base's own bundle, which the image keeps
                mounts.append(f"--volume={HOST_CA}:{HOST_CA}:ro")
            # --format docker keeps the HEALTHCHECK; chroot isolation needs no user namespaces.
            run(["podman", "build", "--format", "docker", "--pull=never", "--network", "host",
                 "--isolation", "chroot", "--layers", "--build-arg", f"PYTHON_IMAGE={base}",
                 *mounts, "--tag", IMAGE, str(ROOT)])  # fmt: skip
    say(f"built {IMAGE} with {builder} ({time.monotonic() - started:.0f} s)")
    if previous and previous != image_id(builder, IMAGE):  # the last run's image, now untagged
        subprocess.run([builder, "rmi", previous], capture_output=True)  # noqa: S603
    return IMAGE


def image_size(builder: str, tag: str) -> int:
    """The image's uncompressed size in bytes, as the builder reports it."""
    return int(run([builder, "image", "inspect", "--format", "{{.Size}}", tag]).stdout.strip())


def compressed_size(builder: str, tag: str) -> int:
    """About what a pull transfers: the saved image, gzipped (level 1, as fast as it gets)."""
    save = subprocess.Popen(
        [builder, "save", tag], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )  # noqa: S603
    assert save.stdout is not None
    gzip = zlib.compressobj(1, zlib.DEFLATED, 31)
    size = 0
    while chunk := save.stdout.read(1 << 20):
        size += len(gzip.compress(chunk))
    size += len(gzip.flush())
    if save.wait() != 0:
        raise SystemExit(f"{builder} save {tag} exited {save.returncode}")
    return size


def image_id(builder: str, tag: str) -> str | None:
    result = subprocess.run([builder, "image", "inspect", "--format", "{{.Id}}", tag],  # noqa: S603
                            capture_output=True, text=True)  # fmt: skip
    return result.stdout.strip() or None


def healthcheck(builder: str, tag: str) -> list[str]:
    """The HEALTHCHECK command the image carries (empty when the builder dropped it)."""
    raw = run([builder, "image", "inspect", "--format", "{{json .Config.Healthcheck}}", tag]).stdout
    test = (json.loads(raw) or {}).get("Test") or []
    return list(test)
