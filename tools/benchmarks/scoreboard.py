"""Where each op stands against its peers and its HBM floor, collected from recorded ``ops.py`` runs (no GPU needed).

A manifest (JSON) names, per op, the run that holds our current figures and the runs that hold each peer's (fla,
SDPA), as paths relative to the manifest: a run directory with ``results.json`` (or ``<op>/results.json`` below
it), optionally ``#other_op`` to read another op's row (causal SDPA has one time per shape whatever the op; a
peer name the row does not time reads our time of that op: an option against the plain call), or a
literal ``{"source": ..., "fwdbwd_ms": {"4096": 5.44}}`` for a figure from outside ``ops.py``. Each pair is compared
on CUDA-graph replays where both runs have them, else on the timed calls; the table says which, and whether the two
figures come from one process (the only ratio the benchmarks count as measured) or from two runs.

    python tools/benchmarks/scoreboard.py docs/benchmarks/scoreboard.json --out docs/benchmarks/scoreboard
"""
import argparse
import json
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import common  # noqa: E402

MODES = ('fwd', 'fwdbwd')
STYLES = {'ours': '-o', 'floor': ':', 'fla': '--s', 'sdpa': '-.^'}


def load_run(base, ref, op):
    """``(rows by N, run id, device)`` of ``op`` (or the ``#op`` in ``ref``) in the run ``ref`` under ``base``."""
    if isinstance(ref, dict):
        rows = {}
        for mode in MODES:
            for n, ms in ref.get(f'{mode}_ms', {}).items():
                rows.setdefault(int(n), {'N': int(n)})[f'X_{mode}_ms'] = ms
        return rows, ref['source'], ref.get('device', '')
    path, _, other = ref.partition('#')
    run = osp.normpath(osp.join(base, path))
    found, env = common.bench_rows(run)
    if not found:
        raise FileNotFoundError(f'no results.json rows under {run}')
    want = other or op
    rows = {r['N']: r for r in found if r.get('op') == want}
    if not rows:
        raise KeyError(f'{want} not in {run}')
    return rows, osp.relpath(run, base), env.get('device', '')


def pick(ours, peer, prefix, mode):
    """``(ours ms, peer ms, 'graph' | 'call')``: graph replays where both rows have one, else the calls."""
    g = f'_{mode}_graph_ms'
    if ours.get('ours' + g) is not None and peer.get(prefix + g) is not None:
        return ours['ours' + g], peer[prefix + g], 'graph'
    return ours.get(f'ours_{mode}_ms'), peer.get(f'{prefix}_{mode}_ms'), 'call'


def _prefix(peer, rows):
    """The key prefix of ``peer``'s times in its rows: its own name, 'X' for a literal figure, else 'ours' (our
    time of another op, e.g. the plain call an option is compared with)."""
    for prefix in (peer, 'X'):
        if any(f'{prefix}_{mode}_ms' in r for r in rows.values() for mode in MODES):
            return prefix
    return 'ours'


def collect(manifest, base):
    """One row per (op, N, pass): our time, against the floor and each peer (``<peer>_ms``, ``<peer>_ratio``,
    ``<peer>_how``: graph / call, one run / two runs), and the series to plot per (op, pass)."""
    rows, series = [], {}
    for entry in manifest['ops']:
        op, label = entry['op'], entry.get('label', entry['op'])
        ours, ours_run, device = load_run(base, entry['ours'], op)
        peers = {}
        for peer, ref in entry.get('peers', {}).items():
            prows, prun, pdevice = load_run(base, ref, op)
            peers[peer] = (prows, prun, pdevice, _prefix(peer, prows))
        ns = sorted(ours)
        for mode in MODES:
            graph = all(ours[n].get(f'ours_{mode}_graph_ms') is not None for n in ns)
            key = f'ours_{mode}_graph_ms' if graph else f'ours_{mode}_ms'
            s = series[(label, mode)] = {
                f"ours ({'graph' if graph else 'call'})": (ns, [ours[n].get(key) for n in ns], STYLES['ours']),
                'HBM floor': (ns, [ours[n].get(f'floor_{mode}_ms') for n in ns], STYLES['floor'])}
            for n in ns:
                floor = ours[n].get(f'floor_{mode}_ms')
                row = {'op': label, 'N': n, 'mode': mode, 'ours': ours[n].get(key), 'floor_ms': floor,
                       'floor_ratio': common.ratio(ours[n].get(key), floor), 'runs': {ours_run}, 'device': {device}}
                for peer, (prows, prun, pdevice, prefix) in peers.items():
                    if n not in prows:
                        continue
                    a, b, kind = pick(ours[n], prows[n], prefix, mode)
                    if b is None:
                        continue
                    row.update({f'{peer}_ms': b, f'{peer}_ratio': common.ratio(a, b),
                                f'{peer}_how': kind + ('' if prun == ours_run else ', 2 runs')})
                    row['runs'].add(prun)
                    row['device'].add(pdevice)
                    s.setdefault(peer, ([], [], STYLES.get(peer, '-x')))
                    s[peer][0].append(n)
                    s[peer][1].append(b)
                row['runs'] = ', '.join(sorted(row['runs']))
                row['device'] = ' / '.join(sorted(d for d in row['device'] if d))
                rows.append(row)
    return rows, series


def _ratio_cell(peer):
    def cell(row):
        r = row.get(f'{peer}_ratio')
        return '-' if r is None else f"{r:.2f}x ({row[f'{peer}_how']})"
    return cell


def report(manifest, rows, series, out):
    os.makedirs(out, exist_ok=True)
    peers = list(dict.fromkeys(k[:-6] for r in rows for k in r if k.endswith('_ratio') and k != 'floor_ratio'))
    cols = [('op', 'op'), ('N', 'N'), ('pass', 'mode'), ('ours ms', 'ours'), ('floor ms', 'floor_ms'),
            ('ours / floor', 'floor_ratio')]
    for peer in peers:
        cols += [(f'{peer} ms', f'{peer}_ms'), (f'ours / {peer}', _ratio_cell(peer))]
    cols += [('runs', 'runs'), ('device', 'device')]
    text = [f"# {manifest.get('title', 'Scoreboard')}", '', manifest.get('note', ''), '',
            'Built by `tools/benchmarks/scoreboard.py` from the recorded runs the manifest names (paths under its '
            'folder). Ours and the floor: graph replays where every N of the run has one. A ratio says how both '
            'figures were timed: "graph" (CUDA-graph replays, kernels only) or "call" (the autograd call as a user '
            'makes it; our call time of the same run, not the graph time beside it); ", 2 runs": the two figures '
            'come from different runs, a pointer rather than a measurement.',
            '', common.md_table(rows, cols), '', '![](scoreboard.png)']
    common.write_text(osp.join(out, 'scoreboard.md'), '\n'.join(text))
    panels = [(f'{label} {mode}', 'N', 'ms', s) for (label, mode), s in series.items()]
    common.plot_panels(osp.join(out, 'scoreboard.png'), panels, title=manifest.get('plot_title'), ncols=4)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('manifest')
    p.add_argument('--out', required=True)
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    manifest = json.load(open(a.manifest))
    rows, series = collect(manifest, osp.dirname(osp.abspath(a.manifest)))
    report(manifest, rows, series, a.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
