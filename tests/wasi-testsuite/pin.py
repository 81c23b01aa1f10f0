#!/usr/bin/env python3
"""Pins a copy of the WASI preview-1 test suite's prebuilt binaries here.

Usage: pin.py GIT_DIR [COMMIT]

GIT_DIR is a clone of https://github.com/WebAssembly/wasi-testsuite (its
.git directory, or a bare clone); COMMIT defaults to the branch
`prod/testsuite-base`, which holds the prebuilt binaries. For each suite
(assemblyscript, c, rust) the `testsuite/wasm32-wasip1` directory is copied
into a directory of the suite's name: the .wasm binaries, their JSON specs,
the manifest and the `fs-tests.dir` fixtures. The binaries lose their
`.debug_*` custom sections (DWARF: 96 of the suite's 101 MB), nothing else:
code, names and producers are the upstream bytes. The repository's LICENSE
is copied beside them, and PINNED records the commit.
"""

import io
import os
import shutil
import subprocess
import sys
import tarfile

SUITES = ["assemblyscript", "c", "rust"]
HERE = os.path.dirname(os.path.abspath(__file__))


def leb128(data, i):
    result = shift = 0
    while True:
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return result, i


def strip_debug(wasm):
    """The module without its `.debug_*` custom sections."""
    assert wasm[:4] == b"\0asm", "not a Wasm binary"
    out = bytearray(wasm[:8])
    i = 8
    while i < len(wasm):
        start = i
        section_id = wasm[i]
        size, body = leb128(wasm, i + 1)
        end = body + size
        if section_id == 0:
            name_len, name_at = leb128(wasm, body)
            name = wasm[name_at:name_at + name_len].decode()
            if name.startswith(".debug"):
                i = end
                continue
        out += wasm[start:end]
        i = end
    return bytes(out)


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    git_dir = sys.argv[1]
    commit = sys.argv[2] if len(sys.argv) == 3 else "prod/testsuite-base"
    git = ["git", "--git-dir", git_dir]
    commit = subprocess.check_output(git + ["rev-parse", commit + "^{commit}"], text=True).strip()
    paths = [f"tests/{s}/testsuite/wasm32-wasip1" for s in SUITES] + ["LICENSE"]
    archive = subprocess.check_output(git + ["archive", "--format=tar", commit] + paths)
    for s in SUITES:
        shutil.rmtree(os.path.join(HERE, s), ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            data = tar.extractfile(member).read()
            if member.name == "LICENSE":
                target = os.path.join(HERE, "LICENSE")
            else:
                suite, rest = member.name.split("/")[1], member.name.split("/", 4)[4]
                target = os.path.join(HERE, suite, rest)
                if target.endswith(".wasm"):
                    data = strip_debug(data)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as f:
                f.write(data)
    with open(os.path.join(HERE, "PINNED"), "w") as f:
        f.write(f"{commit}\n")
    print(f"pinned {commit}")


if __name__ == "__main__":
    main()
