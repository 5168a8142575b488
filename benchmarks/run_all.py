"""Run every benchmark script (or those named): ``python benchmarks/run_all.py [slice moments ...]``."""
import pathlib
import subprocess
import sys

here = pathlib.Path(__file__).resolve().parent
names = [a for a in sys.argv[1:] if not a.startswith("-")]
flags = [a for a in sys.argv[1:] if a.startswith("-")]
scripts = sorted(here.glob("bench_*.py"))
if names:
    scripts = [s for s in scripts if s.stem.removeprefix("bench_") in names]
rc = 0
for s in scripts:
    print(f"=== {s.name}", flush=True)
    rc |= subprocess.call([sys.executable, str(s), *flags])
sys.exit(rc)
