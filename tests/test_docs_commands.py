"""Every command of the README's and docs' ```bash blocks runs as written, read from the documents.

The commands run through the shell with the PATH's ``dumpunet``, in document order, each document
in a working folder prepared with what its commands presuppose (a diffusers folder ``./sd15``,
an A1111 PNG, the stores the README's session made, an S3 server with the buckets the examples
name). The few commands that cannot run here are listed in :data:`EXCLUDED` with the reason, and
every entry must still match a command, so the list cannot go stale.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from doc_commands import (
    ROOT,
    DocCommand,
    commands_in,
    doc_commands,
    split_chain,
    strip_comment,
)

EXCLUDED = {
    "python3 -m venv .venv": "the README's set-up: the test runs in the environment it makes",
    ". .venv/bin/activate": "the README's set-up: the test runs in the environment it makes",
    "pip install ": "installs packages from the network",
    "python -m pytest": "runs the test suite, which holds this test",
    "--model ~/sd/models/Stable-diffusion/": "needs a full-size SD checkpoint (GBs); tests/recorder/test_models.py "
    "loads tiny single-file checkpoints",
}
"""Commands that cannot run in a test, keyed by a substring of the command."""

RUN_ELSEWHERE = {
    "docs/layer-prompts.md": (
        "test_docs.py",
        "test_layer_prompt_worked_example_runs",
        ("its worked example (a 26-run sweep) runs there, with checks of what it writes; its sweep of a prompt "
         "list in test_layer_prompt_sweep_of_a_prompt_list_runs"),
    ),
}
"""Documents whose commands another test runs as written, read from the document: file, test, why."""

BASH = shutil.which("bash") or "/bin/bash"
"""The shell of the docs' ```bash blocks; ``bash -c`` runs a lone command in its own process, so Ctrl-C reaches it alone."""
S3_PORT = 9000  # docs/remote.md's worked example names http://127.0.0.1:9000
SERVE_TIMEOUT = 120.0  # seconds a `dumpunet view` may take to print its address
INFOTEXT = """a cute girl, pink hair, wide shot
Negative prompt: lowres, bad anatomy
Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1719471015, Size: 256x256, \
Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1"""


def excluded(command: DocCommand) -> str | None:
    """The reason ``command`` is not run here, or None."""
    if command.doc in RUN_ELSEWHERE:
        module, test, why = RUN_ELSEWHERE[command.doc]
        return f"run by tests/{module}::{test}: {why}"
    reasons = [reason for key, reason in EXCLUDED.items() if key in command.text]
    assert len(reasons) <= 1, f"{command} matches several exclusions"
    return reasons[0] if reasons else None


# --- reading the commands (fast: no torch, nothing runs) -------------------------------------------


def test_commands_are_read_as_a_reader_types_them():
    text = textwrap.dedent("""\
        Some text.
        ```bash
        # a comment line
        dumpunet render girl.zarr --h "(2+v)/3" \\
            --out renders/   # a comment
        a && b 'x && y'

        ```
        ```
        not bash
        ```
           ```bash
           dumpunet view girl.zarr --steps '1-20(+5)'  # opens #1
           ```
        """)
    assert [(c.line, c.text) for c in commands_in(text, "x.md")] == [
        (4, 'dumpunet render girl.zarr --h "(2+v)/3" --out renders/'),
        (6, "a"),
        (6, "b 'x && y'"),
        (13, "dumpunet view girl.zarr --steps '1-20(+5)'"),
    ]
    assert (
        strip_comment("echo '# not a comment' x#y # comment")
        == "echo '# not a comment' x#y"
    )
    assert split_chain('a "&&" && b') == ['a "&&"', "b"]


def test_every_exclusion_still_matches_a_command():
    commands = doc_commands()
    for key in EXCLUDED:
        assert any(key in c.text for c in commands), (
            f"no command in the docs matches the exclusion {key!r}"
        )
    for doc, (module, test, _) in RUN_ELSEWHERE.items():
        assert any(c.doc == doc for c in commands), f"{doc} has no commands any more"
        source = (ROOT / "tests" / module).read_text()
        assert f"def {test}(" in source and Path(doc).name in source, (
            f"tests/{module}::{test} does not read {doc}"
        )


def test_the_docs_hold_the_commands_this_test_prepares_for():
    texts = [c.text for c in doc_commands()]
    # each preparation below answers a command of the docs; if the command goes, so should its preparation
    for needle in (
        *PREPARE,
        "--model ./sd15",
        "--infotext 00012-1719471015.png",
        "--prompts prompts.txt --sampling-steps 20",
        "s3://lab/",
        "s3://public-bucket/",
        "--lora loras/pink_hair.safetensors",
        "--lora-dir ~/sd/models/Lora",
        "<lora:pink_hair:",
        "--embedding easynegative.safetensors",
    ):
        assert any(needle in t for t in texts), needle


# --- what the commands presuppose --------------------------------------------------------------------


def save_sd15(folder: Path) -> None:
    """``./sd15``: the embedded tiny-sd1, saved as a diffusers folder (what `--model ./sd15` reads)."""
    from dumpunet.recorder.tiny import build_tiny_pipeline

    build_tiny_pipeline("tiny-sd1").save_pretrained(folder / "sd15")


def save_prompts(folder: Path) -> None:
    """``prompts.txt``: the README's prompt list (two prompts, one with per-block prompts)."""
    (folder / "prompts.txt").write_text("a cute girl, pink hair\n# a comment\na (~: M00: excellent :~) girl\n")


def save_a1111_png(folder: Path) -> None:
    """``00012-1719471015.png``: a picture with A1111's ``parameters`` text chunk."""
    from PIL import Image, PngImagePlugin

    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", INFOTEXT)
    Image.new("RGB", (256, 256), (200, 120, 160)).save(
        folder / "00012-1719471015.png", pnginfo=meta
    )


def save_networks(folder: Path, home: Path) -> None:
    """The README's LoRA and embedding files, made for tiny-sd1 (the model those commands use)."""
    import importlib.util

    from dumpunet.recorder.tiny import build_tiny_pipeline

    spec = importlib.util.spec_from_file_location(
        "network_files", ROOT / "tests" / "recorder" / "network_files.py"
    )
    files = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(files)
    pipe = build_tiny_pipeline("tiny-sd1")
    for lora in (
        folder / "loras" / "pink_hair.safetensors",
        home / "sd" / "models" / "Lora" / "pink_hair.safetensors",
    ):
        lora.parent.mkdir(parents=True)
        files.kohya_lora(pipe, lora)
    files.diffusers_embedding(
        folder / "easynegative.safetensors",
        files.embedding_vectors(pipe.text_encoder.config.hidden_size),
    )


def damage_a_copy(folder: Path) -> None:
    """``damaged.zarr``: a recorded store with one chunk deleted (the README's a1111.zarr, 10 steps)."""
    import zarr

    from dumpunet.store.schema import BLOCK_OUTPUT

    store = shutil.copytree(folder / "a1111.zarr", folder / "damaged.zarr")
    path = BLOCK_OUTPUT.path(run="main", block="OUT11")
    key = zarr.open_array(store / path, mode="r").metadata.encode_chunk_key((1, 0, 1, 0, 0, 0))
    (store / path / key).unlink()  # OUT11 at the second call, cond half


PREPARE: dict[str, Callable[[Path], None]] = {
    "dumpunet render damaged.zarr": damage_a_copy,
}
"""Done in the working folder just before the first command holding the key."""

EXPECT = {
    "dumpunet render damaged.zarr": "1 map skipped: damaged chunks",
    "dumpunet info prompts.zarr": "p0001",
}
"""Text the output of the first command holding the key must contain, besides exiting 0."""


# --- running them ------------------------------------------------------------------------------------


class S3:
    """moto's S3 server at 127.0.0.1:9000, with the buckets the docs' examples name."""

    def __init__(self) -> None:
        # the test extra; the s3:// commands need the remote extra
        pytest.importorskip("moto.server")
        pytest.importorskip("s3fs")
        from s3server import ENV, S3Server

        try:
            self.server = S3Server(port=S3_PORT)
        except OSError as exc:
            pytest.fail(
                f"cannot serve S3 at 127.0.0.1:{S3_PORT}, the address docs/remote.md names: {exc}"
            )
        self.env = {
            **ENV,
            "AWS_ENDPOINT_URL": self.server.endpoint,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def fresh_bucket(self, name: str, *, public: bool = False) -> None:
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=self.server.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )
        if any(b["Name"] == name for b in client.list_buckets().get("Buckets", [])):
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    client.delete_objects(Bucket=name, Delete={"Objects": keys})
            client.delete_bucket(Bucket=name)
        client.create_bucket(Bucket=name, **({"ACL": "public-read"} if public else {}))


def command_env(home: Path, s3: S3 | None) -> dict[str, str]:
    """The commands' environment: the dumpunet this test imported, offline, no real AWS, a HOME of their own."""
    import dumpunet

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    # the commands run in other folders: a relative PYTHONPATH (PYTHONPATH=src) would miss the code under test
    # and import whatever dumpunet is installed
    paths = [str(Path(dumpunet.__file__).resolve().parents[1])]
    paths += [
        str(Path(p).resolve()) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p
    ]
    env.update(
        PYTHONPATH=os.pathsep.join(paths),
        HOME=str(home),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        BROWSER="true",  # `dumpunet view` opens "the default browser": here a command that does nothing
        **(s3.env if s3 else {}),
    )
    return env


def run_command(command: DocCommand, cwd: Path, env: dict[str, str]) -> str:
    """Run ``command`` through the shell in ``cwd``; return its output (stdout + stderr); fail unless it exits 0."""
    if command.text.startswith("dumpunet view") and "--export" not in command.text:
        return serve_until_ctrl_c(command, cwd, env)
    proc = subprocess.run(
        command.text,
        shell=True,
        executable=BASH,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, (
        f"{command}\nexit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout + proc.stderr


def serve_until_ctrl_c(command: DocCommand, cwd: Path, env: dict[str, str]) -> str:
    """Start a serving `dumpunet view`, fetch the page at the address it prints, then press Ctrl-C."""
    proc = subprocess.Popen(
        command.text,
        shell=True,
        executable=BASH,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + SERVE_TIMEOUT
        url = None
        while url is None:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, (
                f"{command}\nended before serving:\n{''.join(seen)}"
            )
            seen.append(line)
            if m := re.search(r" at (http://127\.0\.0\.1:\d+/)", line):
                url = m.group(1)
        if "--port" in command.text:
            assert url.endswith(f":{command.text.split('--port', 1)[1].split()[0]}/"), (
                url
            )
        with urllib.request.urlopen(url, timeout=60) as page:
            assert page.status == 200 and b"<html" in page.read().lower(), url
    finally:
        os.killpg(
            proc.pid, signal.SIGINT
        )  # Ctrl-C: to the foreground job (bash -c ran the lone command in place)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    while (line := lines.get(timeout=10)) is not None:
        seen.append(line)
    output = "".join(seen)
    assert proc.returncode == 0 and "dumpunet view: stopped" in output, (
        f"{command}\nexit {proc.returncode}\n{output}"
    )
    return output


@pytest.mark.recorder
@pytest.mark.slow
def test_every_doc_command_runs_as_written(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    if shutil.which("dumpunet") is None:
        pytest.skip("the dumpunet command is not installed (pip install -e .)")
    commands = doc_commands()
    s3 = S3() if any("s3://" in c.text and not excluded(c) for c in commands) else None
    home = tmp_path / "home"
    home.mkdir()
    env = command_env(home, s3)
    readme = (
        tmp_path / "README"
    )  # each document's commands run in order in a folder of its own
    folders: dict[str, Path] = {}
    setup: dict[str, Callable[[Path], None]] = {
        "README.md": lambda d: (
            save_sd15(d),
            save_a1111_png(d),
            save_prompts(d),
            save_networks(d, home),
        ),
        # girl.zarr of the README's session; the worked example's bucket `lab` (empty); a public bucket
        "docs/remote.md": lambda d: prepare_remote(d, readme, s3),
        # the README's stores; a.zarr and b.zarr are two recordings of one model
        "docs/viewer.md": lambda d: [
            shutil.copytree(readme / src, d / dst)
            for src, dst in (
                ("girl.zarr", "girl.zarr"),
                ("pair.zarr", "pair.zarr"),
                ("girl.zarr", "a.zarr"),
                ("demo.zarr", "b.zarr"),
            )
        ],
    }
    if s3:
        s3.fresh_bucket(
            "lab"
        )  # the README: `dumpunet copy girl.zarr s3://lab/girl.zarr`
    prepared, ran, skipped, timings, failures = set(), 0, [], [], []
    try:
        for command in commands:
            if reason := excluded(command):
                skipped.append(f"{command}  [{reason}]")
                continue
            folder = folders.get(command.doc)
            if folder is None:
                folder = folders[command.doc] = tmp_path / Path(command.doc).stem
                folder.mkdir()
                setup.get(command.doc, lambda d: None)(folder)  # a document that makes its own inputs: none
            for key, prepare in PREPARE.items():
                if key in command.text and key not in prepared:
                    prepared.add(key)
                    prepare(folder)
            start = time.perf_counter()
            try:
                output = run_command(command, folder, env)
                for key, text in EXPECT.items():
                    if key in command.text:
                        assert text in output, (
                            f"{command}\nexpected {text!r} in:\n{output[-3000:]}"
                        )
            except AssertionError as exc:
                failures.append(str(exc))
            timings.append((time.perf_counter() - start, command))
            ran += 1
    finally:
        if s3:
            s3.server.stop()
    total = sum(t for t, _ in timings)
    print(
        f"\n{len(commands)} commands: {ran} ran in {total:.0f} s, {len(skipped)} excluded"
    )
    for seconds, command in sorted(timings, key=lambda t: t[0], reverse=True)[:10]:
        print(f"  {seconds:6.1f} s  {command}")
    for line in skipped:
        print(f"  excluded: {line}")
    assert not failures, (
        f"{len(failures)} of {ran} doc commands failed:\n\n" + "\n\n".join(failures)
    )
    # the README's demo: one labelled grid per recorded step of OUT11
    assert len(list((readme / "demo-renders").glob("OUT11-step*.png"))) == 20


def prepare_remote(folder: Path, readme: Path, s3: S3 | None) -> None:
    """docs/remote.md: girl.zarr of the README's session, an empty bucket `lab`, and `public-bucket` holding girl.zarr."""
    from dumpunet.store.location import locate
    from dumpunet.store.transfer import copy_store

    assert s3 is not None
    shutil.copytree(readme / "girl.zarr", folder / "girl.zarr")
    s3.fresh_bucket("lab")
    s3.fresh_bucket("public-bucket", public=True)
    options = {
        "endpoint_url": s3.server.endpoint,
        "key": s3.env["AWS_ACCESS_KEY_ID"],
        "secret": s3.env["AWS_SECRET_ACCESS_KEY"],
    }
    copy_store(folder / "girl.zarr", locate("s3://public-bucket/girl.zarr", options))
