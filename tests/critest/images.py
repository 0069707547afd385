"""Every image critest v1.37.0 pulls, rebuilt from this Debian 12 machine's binaries and pushed to a local
registry, because the machine has no internet: ``build_and_push("127.0.0.1:PORT")``, or
``python -m tests.critest.images 127.0.0.1:PORT``.

Each image goes under the repository path it has on its real registry (registry.k8s.io/e2e-test-images/busybox
is pushed as e2e-test-images/busybox), so a runtime mirroring registry.k8s.io, k8s.gcr.io, gcr.io (and, for
``critest -benchmark``, public.ecr.aws) to the local registry finds them under critest's own names. All are
built deterministically (fixed mtimes, no timestamps): the same bytes, the same ids, on every run. Building
takes about a second; the first run on a machine also downloads Debian's busybox package and compiles three
small C programs into build/critest-images (``prepare()``, which needs the network: call it before entering
a network namespace without one).

What critest does with each (cri-tools pkg/validate, pkg/framework, pkg/benchmark, images/), and what is built:

- e2e-test-images/busybox:1.29-2, the default container image. Specs run sh, echo, sleep, top, pgrep, ls,
  cat, id, hostname, touch, mkdir, mount, dd, seq, sync, grep, chmod, ping, brctl, netstat, ipcs; expect
  ``nobody`` in /etc/passwd, ``sleep infinity``, and ``/bin/sh: ls: Permission denied`` once /bin/ls is
  masked. Built: the busybox of Debian's ``busybox`` package with its C library and a hard link per applet
  (rootfs.py says why not busybox-static, nor symlinks), pgrep and ipcs from toolbox.c (Debian's busybox
  lacks them), upstream's /etc files; Cmd ["sh"].
- e2e-test-images/nginx:1.14-2, the web server (port mapping, port-forward, PID and IPC namespace specs).
  Started with its own Cmd; specs fetch http://POD_IP:80/ (status 200), wait for /var/run/nginx.pid, look for
  "master process" in /proc/1/cmdline and for an "nginx" process with pidof, through sh, cat and grep in the
  container. Only a real nginx does all that, so: Debian's /usr/sbin/nginx with the libraries ldd lists,
  copied to the same paths, over the busybox root; upstream's conf (user nginx, pid /var/run/nginx.pid,
  logs linked to stdout/stderr, the welcome page on port 80); Cmd nginx -g "daemon off;", port 80, SIGTERM.
- k8s-staging-cri-tools/hostnet-nginx-<arch>:latest (port-forward in the host network): the same nginx with
  its default.conf listening on 12003, as images/hostnet-nginx does over nginx:1.25.0 (whose
  /docker-entrypoint.sh, here a plain ``exec "$@"``, and SIGQUIT it keeps). A single-arch image, as upstream.
- e2e-test-images/httpd:2.4.39-4 (multi-container specs): only needs a 200 on port 80, the word "httpd" in
  its log, and echo. Built: busybox httpd serving /usr/local/apache2/htdocs, started by a httpd-foreground
  script that logs "httpd: ..." and stops on SIGTERM, SIGINT or upstream's stop signal SIGWINCH (PID 1
  ignores signals it has no handler for; busybox httpd has none).
- e2e-test-images/nonewprivs:1.3: run as uid 1000, the log must read "Effective uid: 0" (no_new_privs off) or
  "Effective uid: 1000" (on). Built: nnp.c, static, setuid root at /usr/local/bin/nnp, the Entrypoint.
- registry.k8s.io/pause:3.9 and k8s.gcr.io/pause:3.9: the same image (critest checks that one id has both
  names), started with its default Entrypoint. Built: moorage's own pause.c, static, as /pause; User
  65535:65535, as upstream.
- k8s-staging-cri-tools/test-image-user-uid, -username, -uid-group, -username-group: busybox with User
  1002, www-data, 1003:1004 and www-data:1004 (images/build); ImageStatus must give uid 1002 / username
  www-data / uid 1003 / username www-data.
- k8s-staging-cri-tools/test-image-predefined-group: busybox plus what ``adduser -u 1000 -D default-user;
  addgroup -g 50000 group-defined-in-image; addgroup default-user group-defined-in-image`` writes, User 1000
  (images/image-predefined-group); ``id -G`` must print 1000 1234 50000 with SupplementalGroups [1234].
- k8s-staging-cri-tools/test-image-latest, test-image-1/2/3:latest, test-image-tag:test and :all: busybox
  plus an empty file named after the image (images/image-test: ``ADD $TEST $TEST``), so all differ; the
  image volume specs run top and ls in test-image-tag:test and mount it (/bin/ls, /etc/passwd inside).
  test-image-tags:1/2/3: one image (file /same-image) under three tags.
- public.ecr.aws/docker/library/busybox:1.35.0-glibc, 1-uclibc, 1, 1-glibc, 1-musl (``critest -benchmark``'s
  image pull and listing benchmarks, only run when a benchmarking params file sets imagesNumber): busybox,
  each with a one-file layer naming its variant, as OCI indexes like Docker Hub's.

Not built: k8s-staging-cri-tools/test-image-digest@sha256:9700f9a2…, which pins upstream's exact bytes (its
spec, "public image with digest should be pulled and removed", cannot pass offline), and the win-* images
(Windows only). Selinux and apparmor specs need only the busybox image; NRI, idempotence, image consistency
and image id consistency specs need busybox, test-image-tag:test and pause:3.9, all built.

The e2e-test-images, pause and k8s-staging-cri-tools images (hostnet-nginx excepted) are Docker manifest
lists over one image for this machine's architecture, as upstream's are multi-arch lists.
"""

from __future__ import annotations

import argparse
import functools
import platform
import sys
import time
from collections.abc import Mapping
from typing import Any, Literal

from tests.critest import rootfs
from tests.critest.rootfs import (
    BUSYBOX_GROUP,
    BUSYBOX_PASSWD,
    BUSYBOX_SHADOW,
    HERE,
    PAUSE_SOURCE,
    Tree,
    busybox_base,
    program_files,
    static_binary,
)
from tests.fixtures.images import DEFAULT_PATH, Image, Index, Layer, image, index, push

GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x"}.get(
    platform.machine(), platform.machine()
)
E2E = "registry.k8s.io/e2e-test-images/"
STAGING = "gcr.io/k8s-staging-cri-tools/"
ECR_LIBRARY = "public.ecr.aws/docker/library/"

Wrap = Literal["list", "oci-index", "single"]
Target = Image | Index

BUSYBOX_CONFIG: dict[str, Any] = {"Cmd": ["sh"]}
NGINX_LABELS = {"maintainer": "NGINX Docker Maintainers <docker-maint@nginx.com>"}
NGINX_CMD = ["nginx", "-g", "daemon off;"]
NGINX_CONF = """\
user  nginx;
worker_processes  1;

error_log  /var/log/nginx/error.log warn;
pid        /var/run/nginx.pid;

events {
    worker_connections  1024;
}

http {
    include       /etc/nginx/mime.types;
    default_type  application/octet-stream;
    access_log    /var/log/nginx/access.log;
    sendfile      on;
    keepalive_timeout  65;
    include /etc/nginx/conf.d/*.conf;
}
"""
NGINX_INDEX = (
    "<!DOCTYPE html>\n<html>\n<head>\n<title>Welcome to nginx!</title>\n</head>\n<body>\n"
    "<h1>Welcome to nginx!</h1>\n<p>If you see this page, the nginx web server is successfully installed and "
    "working.</p>\n</body>\n</html>\n"
)
HTTPD_FOREGROUND = """\
#!/bin/sh
# busybox httpd in the foreground, in place of Apache's; stops on SIGTERM, SIGINT and SIGWINCH (Apache's
# graceful stop), which busybox httpd, as PID 1, would ignore.
echo "httpd: serving /usr/local/apache2/htdocs on port 80 (busybox httpd)"
httpd -f -v -p 80 -h /usr/local/apache2/htdocs &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid"; exit 0' TERM INT WINCH
wait "$pid"
"""


def nginx_server(port: int) -> str:
    """conf.d/default.conf: the welcome page on ``port``."""
    return (
        f"server {{\n    listen       {port};\n    server_name  localhost;\n\n    location / {{\n"
        "        root   /usr/share/nginx/html;\n        index  index.html index.htm;\n    }\n\n"
        "    error_page   500 502 503 504  /50x.html;\n    location = /50x.html {\n"
        "        root   /usr/share/nginx/html;\n    }\n}\n"
    )


def build(layers: list[Layer], config: Mapping[str, Any], wrap: Wrap = "list") -> Target:
    """An image of ``layers`` with ``config`` (over Env=[PATH]) for this machine, wrapped as asked."""
    style: Literal["oci", "docker"] = "oci" if wrap == "oci-index" else "docker"
    img = image(layers, style=style, architecture=GOARCH, config=config)
    return img if wrap == "single" else index([img], style=style)


def busybox(*layers: Layer, config: Mapping[str, Any] = BUSYBOX_CONFIG, wrap: Wrap = "list") -> Target:
    return build([busybox_base(), *layers], config, wrap)


def marker(path: str, text: str = "") -> Layer:
    """A layer of one small file, which is all that tells images/image-test's images apart."""
    return Tree().file(path, text).layer()


@functools.cache
def nginx_layer() -> Layer:
    """Debian's nginx with its libraries, upstream's conf and page, user nginx (101), logs to stdout/stderr."""
    tree = Tree().host_files(program_files("/usr/sbin/nginx")).host_files(["/etc/nginx/mime.types"])
    tree.file("etc/nginx/nginx.conf", NGINX_CONF).file("etc/nginx/conf.d/default.conf", nginx_server(80))
    tree.file("etc/passwd", BUSYBOX_PASSWD + "nginx:x:101:101:nginx:/var/cache/nginx:/sbin/nologin\n")
    tree.file("etc/group", BUSYBOX_GROUP + "nginx:x:101:nginx\n")
    tree.file("usr/share/nginx/html/index.html", NGINX_INDEX)
    tree.file("usr/share/nginx/html/50x.html", "<html><body><h1>An error occurred.</h1></body></html>\n")
    tree.dir("var/cache/nginx").dir("var/lib/nginx").dir("var/run")
    tree.symlink("var/log/nginx/access.log", "/dev/stdout").symlink("var/log/nginx/error.log", "/dev/stderr")
    return tree.layer()


def predefined_group_layer() -> Layer:
    """What images/image-predefined-group's adduser and addgroup calls change."""
    user = "default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n"
    tree = Tree().file("etc/passwd", BUSYBOX_PASSWD + user)
    tree.file("etc/group", BUSYBOX_GROUP + "default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n")
    tree.file("etc/shadow", BUSYBOX_SHADOW + "default-user:!:19675:0:99999:7:::\n", mode=0o600)
    return tree.dir("home/default-user", uid=1000, gid=1000).layer()


def e2e_images() -> dict[str, Target]:
    """registry.k8s.io's e2e-test-images and pause."""
    nnp = Tree().file("usr/local/bin/nnp", static_binary(HERE / "nnp.c"), mode=0o4755).layer()
    httpd = Tree().file("usr/local/apache2/htdocs/index.html", "<html><body><h1>It works!</h1></body></html>\n")
    httpd.file("usr/local/bin/httpd-foreground", HTTPD_FOREGROUND, mode=0o755)
    httpd_config = {
        "Env": [f"PATH=/usr/local/apache2/bin:{DEFAULT_PATH.removeprefix('PATH=')}", "HTTPD_PREFIX=/usr/local/apache2"],
        "Cmd": ["httpd-foreground"],
        "WorkingDir": "/usr/local/apache2",
        "ExposedPorts": {"80/tcp": {}},
        "StopSignal": "SIGWINCH",
    }
    nginx_config = {"Cmd": NGINX_CMD, "ExposedPorts": {"80/tcp": {}}, "StopSignal": "SIGTERM", "Labels": NGINX_LABELS}
    pause = build(
        [Tree().file("pause", static_binary(PAUSE_SOURCE), mode=0o755).layer()],
        {"Entrypoint": ["/pause"], "User": "65535:65535", "WorkingDir": "/"},
    )
    return {
        f"{E2E}busybox:1.29-2": busybox(),
        f"{E2E}nginx:1.14-2": busybox(nginx_layer(), config=nginx_config),
        f"{E2E}httpd:2.4.39-4": busybox(httpd.layer(), config=httpd_config),
        f"{E2E}nonewprivs:1.3": busybox(nnp, config={"Entrypoint": ["/usr/local/bin/nnp"]}),
        "registry.k8s.io/pause:3.9": pause,
        "k8s.gcr.io/pause:3.9": pause,
    }


def staging_images() -> dict[str, Target]:
    """gcr.io/k8s-staging-cri-tools' images, as cri-tools' images/build makes them."""
    users = {"uid": "1002", "username": "www-data", "uid-group": "1003:1004", "username-group": "www-data:1004"}
    images = {
        f"{STAGING}test-image-user-{name}:latest": busybox(config=BUSYBOX_CONFIG | {"User": user})
        for name, user in users.items()
    }
    images[f"{STAGING}test-image-predefined-group:latest"] = busybox(
        predefined_group_layer(), config=BUSYBOX_CONFIG | {"User": "1000"}
    )
    for name in ("test-image-1", "test-image-2", "test-image-3", "test-image-latest"):
        images[f"{STAGING}{name}:latest"] = busybox(marker(name))
    for tag in ("test", "all"):
        images[f"{STAGING}test-image-tag:{tag}"] = busybox(marker(tag))
    same = busybox(marker("same-image"))
    for tag in ("1", "2", "3"):
        images[f"{STAGING}test-image-tags:{tag}"] = same
    hostnet = Tree().file("etc/nginx/conf.d/default.conf", nginx_server(12003))
    hostnet.file("docker-entrypoint.sh", '#!/bin/sh\nset -e\nexec "$@"\n', mode=0o755)
    hostnet_config = {
        "Entrypoint": ["/docker-entrypoint.sh"],
        "Cmd": NGINX_CMD,
        "ExposedPorts": {"80/tcp": {}},
        "StopSignal": "SIGQUIT",
        "Labels": NGINX_LABELS,
    }
    images[f"{STAGING}hostnet-nginx-{GOARCH}:latest"] = busybox(
        nginx_layer(), hostnet.layer(), config=hostnet_config, wrap="single"
    )
    return images


def benchmark_images() -> dict[str, Target]:
    """The busybox variants ``critest -benchmark`` pulls and lists by default."""
    tags = ("1.35.0-glibc", "1-uclibc", "1", "1-glibc", "1-musl")
    return {f"{ECR_LIBRARY}busybox:{tag}": busybox(marker("etc/variant", f"{tag}\n"), wrap="oci-index") for tag in tags}


@functools.cache
def catalogue() -> dict[str, Target]:
    """Every image critest pulls, by its full original name (tags explicit), built once per process."""
    return e2e_images() | staging_images() | benchmark_images()


def prepare() -> None:
    """Fetch and compile into build/critest-images what the images are made of. The one step that may need the
    network (``apt-get download busybox``, once per machine), so call it before leaving the host's network
    namespace; build_and_push() then works offline."""
    rootfs.debian_busybox()
    for source in (HERE / "toolbox.c", HERE / "nnp.c", PAUSE_SOURCE):
        static_binary(source)


def split_name(name: str) -> tuple[str, str]:
    """registry.k8s.io/e2e-test-images/busybox:1.29-2 → ("e2e-test-images/busybox", "1.29-2")."""
    _, _, path = name.partition("/")
    repo, _, tag = path.rpartition(":")
    return repo, tag


def build_and_push(registry: str) -> list[str]:
    """Build every image critest pulls and push it to the plain-http registry at `registry` ("127.0.0.1:PORT"),
    under the repository path the image has on its real registry (e.g. registry.k8s.io/e2e-test-images/busybox:1.29-2
    is pushed as 127.0.0.1:PORT/e2e-test-images/busybox:1.29-2, gcr.io/k8s-staging-cri-tools/test-image-1:latest as
    127.0.0.1:PORT/k8s-staging-cri-tools/test-image-1:latest). Returns the full original names it made."""
    base = registry if "://" in registry else f"http://{registry}"
    names = []
    for name, target in catalogue().items():
        repo, tag = split_name(name)
        push(base, repo, tag, target)
        names.append(name)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("registry", help="the plain-http registry, 127.0.0.1:PORT")
    args = parser.parse_args(argv)
    started = time.monotonic()
    names = build_and_push(args.registry)
    print("\n".join(names))
    print(f"{len(names)} images built and pushed in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
