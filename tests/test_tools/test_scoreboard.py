"""tools/benchmarks/scoreboard.py: the op-by-op scoreboard built from recorded ops.py runs (CPU, no GPU)."""
import json
import os.path as osp
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'tools', 'benchmarks'))
import scoreboard  # noqa: E402


def _run(path, rows):
    path.mkdir(parents=True)
    (path / 'results.json').write_text(json.dumps({'env': {'device': 'GPU-X'}, 'bench': rows}))


def test_scoreboard_pairs_like_with_like_and_marks_two_runs(tmp_path):
    _run(tmp_path / 'a', [
        {'op': 'gla', 'N': 16, 'ours_fwd_ms': 2.0, 'ours_fwd_graph_ms': 1.0, 'floor_fwd_ms': 0.5,
         'fla_fwd_ms': 3.0, 'fla_fwd_graph_ms': 4.0},
        {'op': 'gla', 'N': 32, 'ours_fwd_ms': 6.0, 'ours_fwd_graph_ms': 3.0, 'floor_fwd_ms': 1.0, 'fla_fwd_ms': 2.0},
        {'op': 'plain', 'N': 16, 'ours_fwd_ms': 1.0, 'ours_fwd_graph_ms': 0.5},
        {'op': 'skipped', 'N': 16, 'skipped': 'deadline'}])
    (tmp_path / 'b').mkdir()
    _run(tmp_path / 'b' / 'gla', [{'op': 'gla', 'N': 16, 'sdpa_fwd_ms': 8.0}])
    manifest = {'title': 'T', 'ops': [
        {'op': 'gla', 'label': 'GLA', 'ours': 'a', 'peers': {
            'fla': 'a', 'sdpa': 'b', 'ext': {'source': 'paper', 'fwd_ms': {'32': 1.5}}, 'plain': 'a#plain'}}]}
    (tmp_path / 'm.json').write_text(json.dumps(manifest))
    assert scoreboard.main([str(tmp_path / 'm.json'), '--out', str(tmp_path / 'out')]) == 0
    rows, series = scoreboard.collect(manifest, str(tmp_path))
    fwd = {r['N']: r for r in rows if r['mode'] == 'fwd'}
    assert fwd[16]['ours'] == 1.0 and fwd[16]['floor_ratio'] == 2.0
    assert (fwd[16]['fla_ratio'], fwd[16]['fla_how']) == (0.25, 'graph')      # both graphs, one run
    assert (fwd[32]['fla_ratio'], fwd[32]['fla_how']) == (3.0, 'call')       # fla has no graph at 32: calls
    assert (fwd[16]['sdpa_ratio'], fwd[16]['sdpa_how']) == (0.25, 'call, 2 runs') and 'sdpa_ms' not in fwd[32]
    assert (fwd[32]['ext_ratio'], fwd[32]['ext_how']) == (4.0, 'call, 2 runs')
    assert (fwd[16]['plain_ratio'], fwd[16]['plain_how']) == (2.0, 'graph')  # our time of another op
    assert series[('GLA', 'fwd')]['ours (graph)'] == ([16, 32], [1.0, 3.0], '-o')
    text = (tmp_path / 'out' / 'scoreboard.md').read_text()
    assert '| GLA | 32 | fwd | 3 | 1 | 3 | 2 | 3.00x (call) |' in text
    with pytest.raises(KeyError):
        scoreboard.collect({'ops': [{'op': 'nope', 'ours': 'a'}]}, str(tmp_path))


def test_committed_scoreboard_manifest_resolves():
    path = osp.join(ROOT, 'docs', 'benchmarks', 'scoreboard.json')
    manifest = json.load(open(path))
    rows, _ = scoreboard.collect(manifest, osp.dirname(path))
    for entry in manifest['ops']:
        mine = [r for r in rows if r['op'] == entry.get('label', entry['op'])]
        assert mine and all(r['ours'] for r in mine), entry['op']
        for peer in entry.get('peers', {}):
            assert any(r.get(f'{peer}_ratio') for r in mine), (entry['op'], peer)
