"""The committed OIDC client bundle is exactly what the locked npm packages build (no hand edits, no
stale bundle after an upgrade), and it is one self-contained ES module the page can import."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NODE = ROOT / "tools" / "node"
BUNDLE = ROOT / "graphql_api" / "static" / "vendor" / "oidc-client-ts.js"


def test_the_committed_bundle_is_what_the_locked_packages_build(tmp_path):
    assert (NODE / "node_modules" / "esbuild").is_dir(), "run `make web` (npm ci in tools/node) first"
    rebuilt = tmp_path / "oidc-client-ts.js"
    subprocess.run([shutil.which("node") or "node", str(NODE / "web" / "build.mjs"), str(rebuilt)], check=True,
                   timeout=120, cwd=NODE)
    assert rebuilt.read_bytes() == BUNDLE.read_bytes(), "stale bundle: run `make web` and commit it"
    locked = json.loads((NODE / "package-lock.json").read_text())["packages"]["node_modules/oidc-client-ts"]
    assert BUNDLE.read_text().startswith(f"/* oidc-client-ts {locked['version']} (Apache-2.0)")


def test_the_bundle_is_a_self_contained_es_module():
    text = BUNDLE.read_text()
    assert not re.search(r"""\bimport\s*(?:[\w{}*\s,]+from\s*)?["']""", text), "bare imports cannot load in a page"
    exported = re.search(r"export\{([^}]*)\};?\s*$", text).group(1)
    assert {name.split(" as ")[-1] for name in exported.split(",")} == {"Log", "UserManager", "WebStorageStateStore"}
