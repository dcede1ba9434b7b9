# A Python process's heap as real programs leave it: a Debian package list
# parsed into dicts with a dependency index, and arrays of floats (a noisy
# time series as a list, measurements in array('d')). hack/realmem starts
# it, dumps its anonymous memory once it prints "ready", then closes stdin.
#
#   python3 heap.py PACKAGES_FILE MAX_PACKAGES FLOATS
import array
import math
import random
import re
import sys


def parse(path, limit):
    pkgs = []
    with open(path, encoding="utf-8", errors="replace") as f:
        para = {}
        key = None
        for line in f:
            line = line.rstrip("\n")
            if not line:
                if para:
                    pkgs.append(para)
                    if len(pkgs) >= limit:
                        break
                para, key = {}, None
            elif line[0] in " \t" and key:
                para[key] += "\n" + line[1:]
            elif ":" in line:
                key, _, value = line.partition(":")
                para[key] = value.strip()
        if para and len(pkgs) < limit:
            pkgs.append(para)
    return pkgs


def main():
    path, limit, nfloats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    pkgs = parse(path, limit)
    by_name = {p.get("Package", ""): p for p in pkgs}
    split = re.compile(r"\s*[(|]")
    deps = {}
    rdeps = {}
    for name, p in by_name.items():
        ds = [split.split(d.strip())[0] for d in p.get("Depends", "").split(",") if d.strip()]
        deps[name] = ds
        for d in ds:
            rdeps.setdefault(d, []).append(name)
    sections = {}
    for p in pkgs:
        sections.setdefault(p.get("Section", "?"), []).append(p.get("Package"))
    sizes = [float(p.get("Installed-Size", "0") or 0) for p in pkgs]

    rnd = random.Random(17)
    series = [20.0 + 5.0 * math.sin(i / 500.0) + rnd.gauss(0.0, 0.3) for i in range(nfloats)]
    prices = array.array("d", (round(rnd.uniform(1, 500), 2) for _ in range(nfloats)))
    counts = array.array("d", (float(rnd.randrange(0, 1000)) for _ in range(nfloats // 2)))
    keep = (pkgs, by_name, deps, rdeps, sections, sizes, series, prices, counts)
    print("ready", flush=True)
    sys.stdin.read()
    return keep


main()
