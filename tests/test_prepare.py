"""Data before jobs: CIFAR fetched once under a file lock from a loopback HTTP server serving a
real-format archive built here (torchvision's URL and checksums patched inside the test only),
ImageNet's class folders checked, and a grid whose data is missing submits nothing."""
import gzip
import hashlib
import http.server
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from we.errors import DatasetNotFoundError
from we.grid.cli import main
from we.train import fashion_mnist
from we.train.dataset_fetch import prepare_dataset
from we.train.datasets import DATASET_SPECS

REPO = Path(__file__).resolve().parent.parent
PER_BATCH = 10
BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def cifar10_archive() -> tuple[bytes, dict[str, str]]:
    """A CIFAR-10 python archive in the real format (pickled dicts of uint8 rows), PER_BATCH images a
    batch; returns (tar.gz bytes, md5 of every member file)."""
    rng = np.random.default_rng(0)
    files = {}
    for name in BATCHES:
        entry = {"batch_label": name, "labels": [int(x) for x in rng.integers(0, 10, PER_BATCH)],
                 "data": rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8),
                 "filenames": [f"{name}_{i}.png" for i in range(PER_BATCH)]}
        files[name] = pickle.dumps(entry, protocol=2)
    files["batches.meta"] = pickle.dumps({"label_names": [f"class{i}" for i in range(10)],
                                          "num_cases_per_batch": PER_BATCH, "num_vis": 3072}, protocol=2)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), {name: md5(data) for name, data in files.items()}


class ArchiveServer:
    """Serves one archive on 127.0.0.1 (slowly, so a second prepare arrives during the download) and
    counts the downloads: GETs other than torchvision's redirect probe (a GET with a `Method: HEAD`
    header, which torchvision's download_url sends first)."""

    def __init__(self, archive: bytes, delay_s: float = 1.5) -> None:
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                if self.headers.get("Method") != "HEAD":
                    server.requests += 1
                    time.sleep(delay_s)
                self.send_response(200)
                self.send_header("Content-Length", str(len(archive)))
                self.end_headers()
                self.wfile.write(archive)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/cifar-10-python.tar.gz"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def patch_source(url: str, tgz_md5: str, sums: dict[str, str]) -> str:
    """Python lines that point torchvision's CIFAR10 at the test archive (in the process running them)."""
    return (f"from torchvision.datasets import CIFAR10\n"
            f"CIFAR10.url = {url!r}\nCIFAR10.tgz_md5 = {tgz_md5!r}\n"
            f"CIFAR10.train_list = {[[n, sums[n]] for n in BATCHES[:5]]!r}\n"
            f"CIFAR10.test_list = {[['test_batch', sums['test_batch']]]!r}\n"
            f"CIFAR10.meta = {{'filename': 'batches.meta', 'key': 'label_names', 'md5': {sums['batches.meta']!r}}}\n")


@pytest.fixture
def served():
    archive, sums = cifar10_archive()
    server = ArchiveServer(archive)
    try:
        yield server, md5(archive), sums
    finally:
        server.close()


def test_two_concurrent_prepares_download_once(tmp_path: Path, served):
    server, tgz_md5, sums = served
    root, gate = tmp_path / "data", tmp_path / "gate"
    gate.mkdir()
    # each process signals that it is ready, then both start preparing at once (the server answers
    # slowly, so the second finds no data and waits on the lock while the first downloads)
    script = patch_source(server.url, tgz_md5, sums) + (
        "import os, sys, time\nfrom pathlib import Path\nfrom we.train.dataset_fetch import prepare_dataset\n"
        "gate = Path(sys.argv[2])\n(gate / f'ready-{os.getpid()}').touch()\n"
        "while not (gate / 'go').exists():\n    time.sleep(0.01)\n"
        "print(prepare_dataset('cifar10', sys.argv[1], True))\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(root), str(gate)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    deadline = time.time() + 120
    while len(list(gate.glob("ready-*"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    (gate / "go").touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert server.requests == 1  # one download for two prepares
    lines = sorted(o[0].strip() for o in outs)
    assert [line.split(": ", 1)[1].split(" in ")[0] for line in lines] == [
        "downloaded and verified", "ready"], lines
    assert "(fetched by another prepare)" in lines[1], lines
    folder = root / "cifar-10-batches-py"
    for name, digest in sums.items():  # intact: every file as served
        assert md5((folder / name).read_bytes()) == digest, name
    check = patch_source(server.url, tgz_md5, sums) + (
        "import sys\nds = CIFAR10(sys.argv[1], train=True, download=False)\n"
        "print(len(ds), ds[0][1] in range(10))\n")
    res = subprocess.run([sys.executable, "-c", check, str(root)], capture_output=True, text=True, timeout=120)
    assert res.stdout.split() == [str(5 * PER_BATCH), "True"], res.stderr
    # a third prepare finds the data ready and does not ask the server
    res = subprocess.run([sys.executable, "-c", script, str(root), str(gate)], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and "ready in" in res.stdout and server.requests == 1, res.stderr


def test_corrupt_file_is_fetched_again(tmp_path: Path, served, monkeypatch):
    server, tgz_md5, sums = served
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "url", server.url)
    monkeypatch.setattr(CIFAR10, "tgz_md5", tgz_md5)
    monkeypatch.setattr(CIFAR10, "train_list", [[n, sums[n]] for n in BATCHES[:5]])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", sums["test_batch"]]])
    root = tmp_path / "data"
    assert "downloaded" in prepare_dataset("cifar10", root)
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:-7])  # truncated: torchvision's md5 check fails
    with pytest.raises(DatasetNotFoundError, match=r"^dataset cifar10 missing or corrupt in .*cifar-10-batches-py "
                                                   r"and download is off$"):
        prepare_dataset("cifar10", root, download=False)
    (root / "cifar-10-python.tar.gz").unlink()  # the archive is fetched again, not trusted
    assert "downloaded" in prepare_dataset("cifar10", root)
    assert md5(batch.read_bytes()) == sums["data_batch_3"] and server.requests == 2


def test_unreachable_download_is_one_line_naming_dataset_and_folder(tmp_path: Path, monkeypatch):
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")  # discard port: refused
    with pytest.raises(DatasetNotFoundError) as info:
        prepare_dataset("cifar10", tmp_path / "nodata")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("dataset cifar10 missing in ")
    assert str(tmp_path / "nodata" / "cifar-10-batches-py") in msg and "download from" in msg


def test_imagenet_needs_1000_matching_class_folders(tmp_path: Path):
    root = tmp_path / "imagenet"
    with pytest.raises(DatasetNotFoundError, match=r"no train/ folder in"):
        prepare_dataset("imagenet", root)
    for split in ("train", "val"):
        for i in range(1000):
            (root / split / f"n{i:08d}").mkdir(parents=True)
    assert "1000 classes" in prepare_dataset("imagenet", root)
    (root / "val" / "n00000007").rename(root / "val" / "n99999999")
    with pytest.raises(DatasetNotFoundError, match=r"different classes \(e\.g\. n00000007\)"):
        prepare_dataset("imagenet", root)
    (root / "val" / "n99999999").rmdir()
    with pytest.raises(DatasetNotFoundError, match=r"holds 999 class folders, expected 1000"):
        prepare_dataset("imagenet", root)
    assert prepare_dataset("digits", root) == "digits: built in (scikit-learn)"


def cifar_grid(tmp_path: Path) -> Path:
    path = tmp_path / "cifargrid.yaml"
    path.write_text(yaml.safe_dump({"name": "cifargrid", "base": {
        "dataset": "cifar10", "model": "resnet20", "epochs": 1, "limit_train": 64, "batch_size": 32,
        "workers": 0, "progress": "plain"}, "axes": {"method": ["baseline", "we"]}, "seeds": [0]}))
    return path


def test_missing_data_stops_submit_before_anything(tmp_path: Path, capsys):
    path, runs, data = cifar_grid(tmp_path), tmp_path / "runs", tmp_path / "nodata"
    code = main(["submit", str(path), "--runs-root", str(runs), "--set", f"data_dir={data}", "download=false"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert err == (f"error: dataset cifar10 missing or corrupt in {data / 'cifar-10-batches-py'} "
                   "and download is off"), err
    assert not runs.exists()


class Recorder:
    """An executor that starts nothing and records what it was given."""

    name = "recorder"

    def __init__(self):
        self.cells = []

    def submit(self, cells, grid_dir, jobs=None):
        self.cells += list(cells)
        return [{"job_id": f"rec-{i}", "executor": "recorder", "time": "2026-01-01T00:00:00+00:00"}
                for i, _ in enumerate(cells)]


def test_prepared_cells_run_with_download_off(tmp_path: Path, served, monkeypatch, capsys):
    """`prepare GRID` fetches the data (data_dir relative to the working directory); `submit` then
    finds it ready and gives the jobs `download: false` and the absolute data_dir (result-neutral:
    the run folders keep their names)."""
    from torchvision.datasets import CIFAR10

    from we.grid.cli import submit
    from we.grid.identity import parse_sets, resolve_cells
    from we.grid.schema import load_grid

    server, tgz_md5, sums = served
    path, runs = cifar_grid(tmp_path), tmp_path / "runs"
    script = patch_source(server.url, tgz_md5, sums) + (
        "import sys\nfrom we.grid.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    res = subprocess.run([sys.executable, "-c", script, "prepare", "--set", "data_dir=data", str(path)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr
    assert "cifar10: downloaded and verified" in res.stdout and server.requests == 1
    monkeypatch.setattr(CIFAR10, "train_list", [[n, sums[n]] for n in BATCHES[:5]])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", sums["test_batch"]]])
    monkeypatch.chdir(tmp_path)
    grid = load_grid(path)
    cells = resolve_cells(grid, runs, parse_sets(["data_dir=data"]))
    folders = [c.run_dir for c in cells]
    executor = Recorder()
    submit(grid, cells, executor, runs)
    assert "data: cifar10: ready in" in capsys.readouterr().out and server.requests == 1
    assert [c.run_dir for c in executor.cells] == folders
    for cell in executor.cells:
        stored = json.loads((cell.run_dir / "cell.json").read_text())["config"]
        assert stored["download"] is False and stored["data_dir"] == str(tmp_path / "data")


@pytest.mark.parametrize("name", sorted(DATASET_SPECS))
def test_every_registered_dataset_can_be_prepared(name: str, tmp_path: Path, monkeypatch):
    """`prepare` (and so `submit`) knows every dataset of the registry: an empty data folder with download off
    is ready (digits) or one line naming what is missing, never `unknown`."""
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "no-system-copy")
    try:
        line = prepare_dataset(name, tmp_path / "data", download=False)
    except DatasetNotFoundError as err:
        line = str(err)
    assert "unknown" not in line and "\n" not in line, line


def test_fashion_mnist_is_prepared_from_the_idx_gz_files(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "no-system-copy")
    src = tmp_path / "data" / "fashion-mnist"
    src.mkdir(parents=True)
    for i, name in enumerate(fashion_mnist.IDX_FILES):
        with gzip.open(src / f"{name}.gz", "wb") as f:
            f.write(bytes([i]) * 16)
    line = prepare_dataset("fashion_mnist", tmp_path / "data", download=False)
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    assert line == f"fashion_mnist: the 4 idx files in {raw}"
    assert [(raw / n).read_bytes() for n in fashion_mnist.IDX_FILES] == [bytes([i]) * 16 for i in range(4)]
