"""The committed generated code is exactly what protos/ generates today."""

from __future__ import annotations

import filecmp
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "service" / "grpc" / "generated"
SCRIPT = ROOT / "scripts" / "gen_proto.sh"


def _files(root: Path) -> set[str]:
    return {
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_committed_code_matches_a_fresh_generation(tmp_path: Path) -> None:
    subprocess.run([str(SCRIPT), str(tmp_path)], check=True, capture_output=True, timeout=120)
    fresh, committed = _files(tmp_path), _files(COMMITTED)
    assert "signingkeys/v1/__init__.py" in fresh and "signingkeys/v1/signing_keys_pb2.py" in fresh
    assert fresh == committed, "run `make proto` and commit the result"
    stale = [
        name
        for name in sorted(fresh)
        if not filecmp.cmp(tmp_path / name, COMMITTED / name, shallow=False)
    ]
    assert not stale, f"generated code is stale ({', '.join(stale)}): run `make proto`"
