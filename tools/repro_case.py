"""Rerun named cases of the GPU sweep (tools/check_ops_gpu.py) one by one, optionally under launch overrides:
``python tools/repro_case.py --ids ID [ID ...] [--launch JSON ...]``; prints each case's status, judged errors and
max |x - ref| per output; exits 1 when a case fails."""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_ops_gpu as C  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--ids', nargs='+', required=True)
    p.add_argument('--launch', nargs='*', default=['{}'], help='kernel_options(launch=...) JSON, one run each')
    p.add_argument('--device', default=None)
    args = p.parse_args(argv)
    import torch
    ops = C.bind_ops()
    dev = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    specs = {s.name: s for s in C.make_ops(ops)}
    cases = {c['id']: c for c in C.design()}
    rc = 0
    for launch in args.launch:
        for i in args.ids:
            c = cases[i]
            with ops.common.kernel_options(launch=json.loads(launch)):
                r = C.run_case(torch, specs[c['op']], c, dev, 'triton')
            rc |= r['status'] != 'pass'
            print(launch, i, r['status'], json.dumps({k: f'{v:.1e}' for k, v in r['errors'].items()}),
                  'max_abs', json.dumps({k: f'{v:.1e}' for k, v in r['max_abs'].items()}), flush=True)
    return rc


if __name__ == '__main__':
    sys.exit(main())
