"""The analysis half never imports torch or diffusers (it must run on a laptop without them)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from waiting import BACKSTOP

BLOCKER = textwrap.dedent(
    """
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "diffusers", "transformers", "safetensors"):
                raise ImportError(f"{name} is blocked: the analyzer must not import it")
            return None
    sys.meta_path.insert(0, Block())
    """
)


def run_blocked(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code)], capture_output=True, text=True, timeout=BACKSTOP
    )


def test_core_modules_import_without_torch():
    proc = run_blocked(
        """
        import dumpunet, dumpunet.store.schema, dumpunet.specs, dumpunet.store, dumpunet.store.summary, dumpunet.cli
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers"))
        print("heavy:", heavy)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "heavy: []"


def test_info_validate_and_help_run_without_torch(tmp_path):
    from test_store import write_store

    write_store(tmp_path / "s.zarr")
    proc = run_blocked(
        f"""
        import sys
        from click.testing import CliRunner
        from dumpunet.cli import main
        r = CliRunner()
        for args in (["info", {str(tmp_path / "s.zarr")!r}], ["validate", {str(tmp_path / "s.zarr")!r}], ["--help"]):
            res = r.invoke(main, args)
            assert res.exit_code == 0, (args, res.output, res.exception)
            print(res.output.splitlines()[0])
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers"))
        print("heavy:", heavy)
        """
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("store     ")
    assert lines[1] == f"{tmp_path / 's.zarr'}: ok"
    assert lines[2].startswith("Usage: ")
    assert lines[-1] == "heavy: []"


def test_render_and_export_run_without_torch(tmp_path):
    from test_store import write_store

    store = tmp_path / "s.zarr"
    write_store(store)
    proc = run_blocked(
        f"""
        import sys
        from click.testing import CliRunner
        import dumpunet
        from dumpunet.cli import main
        r = CliRunner()
        for args in (["render", {str(store)!r}, "--out", {str(tmp_path / "r")!r}, "--quiet"],
                     ["render", {str(store)!r}, "--method", "pca", "--out", {str(tmp_path / "p")!r}, "--quiet"],
                     ["export", {str(store)!r}, "--format", "safetensors", "--out", {str(tmp_path / "e")!r}],
                     ["render", "--help"], ["export", "--help"]):
            res = r.invoke(main, args)
            assert res.exit_code == 0, (args, res.output, res.exception)
        files = dumpunet.render({str(store)!r}, style=dumpunet.GridStyle(average="mean"), out={str(tmp_path / "a")!r},
                                progress=False)
        files += dumpunet.export({str(store)!r}, out={str(tmp_path / "b")!r}, format="npy", progress=False)
        print(len(files))
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers", "safetensors"))
        print("heavy:", heavy)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["18", "heavy:", "[]"]


def test_diff_and_contact_sheets_run_without_torch(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent / "analyzer"))
    from synthetic_stores import make_paired_store

    store = make_paired_store(tmp_path / "sweep.zarr", labels=("IN04", "M00"))
    proc = run_blocked(
        f"""
        import sys
        from click.testing import CliRunner
        import dumpunet
        from dumpunet.cli import main
        r = CliRunner()
        for args in (["diff", {str(store)!r}, "--pair", "M00", "--out", {str(tmp_path / "d")!r}, "--quiet"],
                     ["render", {str(store)!r}, "--sweep", "--out", {str(tmp_path / "s")!r}],
                     ["diff", "--help"]):
            res = r.invoke(main, args)
            assert res.exit_code == 0, (args, res.output, res.exception)
        files = dumpunet.diff({str(store)!r}, dumpunet.Pick(blocks="M00", steps="20"), out={str(tmp_path / "a")!r},
                              progress=False)
        print(len(files))
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers", "safetensors"))
        print("heavy:", heavy)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["7", "heavy:", "[]"]


def test_stats_and_datasets_run_without_torch(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent / "analyzer"))
    from synthetic_stores import make_store

    store = make_store(tmp_path / "s.zarr")
    other = make_store(tmp_path / "t.zarr", seed=2)
    proc = run_blocked(
        f"""
        import sys
        from click.testing import CliRunner
        import dumpunet
        from dumpunet.cli import main
        res = CliRunner().invoke(main, ["stats", {str(store)!r}, "--blocks", "OUT11", "--steps", "20",
                                        "--out", {str(tmp_path / "st")!r}])
        assert res.exit_code == 0, (res.output, res.exception)
        assert CliRunner().invoke(main, ["stats", "--help"]).exit_code == 0
        ds = dumpunet.open_dataset([{str(store)!r}, {str(other)!r}], blocks="OUT11")
        print(ds["OUT11"].sizes["run"], float(ds["OUT11"].astype("float64").mean().compute()) != 0)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers", "safetensors"))
        print("heavy:", heavy)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["2", "True", "heavy:", "[]"]
