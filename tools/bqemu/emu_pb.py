"""The Storage Write API messages, generated from proto/*.proto at run time.

The repository's proto/ directory holds relayd's own trimmed proto2
declarations of the Storage Write API (the C side compiles them with
protoc-c).  This module runs `protoc --python_out` on the same files, so the
emulator and the C client read one definition and cannot drift apart.

The generated modules go to a cache directory named after a hash of the
.proto sources and the protoc version, so protoc runs once per change:

  $BQEMU_PB_CACHE, else $XDG_CACHE_HOME/bqemu or ~/.cache/bqemu, else
  <tmp>/bqemu-pb-<uid>;  inside it pb-<hash>/ holds *_pb2.py.

A directory is generated under a temporary name and renamed into place, so
processes starting at the same time never see half a directory.

Use:
    from emu_pb import pb
    req = pb.storage.AppendRowsRequest()
    pb.storage, pb.status (google.rpc.Status), pb.bqproto (Int64Value,
    Timestamp, Any, DescriptorProto stand-ins)
"""

import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.environ.get("BQEMU_PROTO_DIR") or os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
PROTO_FILES = ("bqproto.proto", "google_rpc_status.proto", "bigquery_storage_v1.proto")
MODULES = {"bqproto": "bqproto_pb2", "status": "google_rpc_status_pb2", "storage": "bigquery_storage_v1_pb2"}
PROTOC = os.environ.get("PROTOC") or "protoc"

# Full gRPC method names of the service.
SERVICE = "google.cloud.bigquery.storage.v1.BigQueryWrite"
STORAGE_ERROR_TYPE_URL = "type.googleapis.com/google.cloud.bigquery.storage.v1.StorageError"


class ProtoUnavailable(RuntimeError):
    pass


def _cache_root():
    env = os.environ.get("BQEMU_PB_CACHE")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    cand = os.path.join(base, "bqemu")
    try:
        os.makedirs(cand, mode=0o700, exist_ok=True)
        if os.access(cand, os.W_OK):
            return cand
    except OSError:
        pass
    return os.path.join(tempfile.gettempdir(), "bqemu-pb-%d" % os.getuid())


def _protoc_version():
    try:
        p = subprocess.run([PROTOC, "--version"], capture_output=True, text=True, timeout=30)
    except OSError as e:
        raise ProtoUnavailable("the Storage Write service needs protoc to compile %s (%s); install "
                               "Debian's protobuf-compiler" % (PROTO_DIR, e))
    return p.stdout.strip()


def _source_hash():
    h = hashlib.sha256(_protoc_version().encode())
    for name in PROTO_FILES:
        path = os.path.join(PROTO_DIR, name)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ProtoUnavailable("cannot read %s: %s" % (path, e))
        h.update(name.encode() + b"\0" + data + b"\0")
    return h.hexdigest()[:20]


def generate(out_dir):
    """Run protoc --python_out on proto/*.proto into out_dir (created)."""
    os.makedirs(out_dir, exist_ok=True)
    cmd = [PROTOC, "--python_out=" + out_dir, "-I" + PROTO_DIR] + [os.path.join(PROTO_DIR, n) for n in PROTO_FILES]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise ProtoUnavailable("protoc failed on %s: %s" % (PROTO_DIR, p.stderr.strip()))


def module_dir():
    """The cache directory holding the generated modules (generated if missing)."""
    root = _cache_root()
    os.makedirs(root, mode=0o700, exist_ok=True)
    final = os.path.join(root, "pb-" + _source_hash())
    if os.path.isdir(final):
        return final
    tmp = tempfile.mkdtemp(prefix=".gen-", dir=root)
    try:
        generate(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not os.path.isdir(final):       # lost a race only if someone else made it
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return final


class _Modules:
    """Lazy access: the first attribute use generates (if needed) and imports."""

    def __init__(self):
        self._lock = threading.Lock()
        self._loaded = None

    def load(self):
        with self._lock:
            if self._loaded is None:
                d = module_dir()
                if d not in sys.path:
                    sys.path.insert(0, d)
                self._loaded = {k: importlib.import_module(m) for k, m in MODULES.items()}
                self._loaded["dir"] = d
            return self._loaded

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        mods = self.load()
        if name not in mods:
            raise AttributeError(name)
        return mods[name]


pb = _Modules()
