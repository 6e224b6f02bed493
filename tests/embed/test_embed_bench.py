"""The stage-1 benchmark (embed.bench.embed) runs end to end on the tiny model and prints its
machine-readable last line, with a local weights file as the backbone's source."""

from __future__ import annotations

import re

import torch
from safetensors.torch import save_file

from embed.backbones import get_backbone
from embed.bench import embed as bench
from embed.weights import build_model

LINE = re.compile(r"bench-embed views_per_s=(?P<b>[\d.]+) limit_views_per_s=(?P<a>[\d.]+) "
                  r"naive_views_per_s=(?P<c>[\d.]+) vs_limit=(?P<vl>[\d.]+) "
                  r"vs_naive=(?P<vn>[\d.]+) peak_rss_mb=(?P<m>\d+)")


def test_bench_prints_its_summary_line(synthetic_h5, tmp_path, capsys):
    model, _ = build_model(get_backbone("tiny_random"))
    weights = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    assert bench.main(["--h5", str(synthetic_h5), "--backbone", "tiny_random",
                       "--weights", str(weights), "--slides", "S_1", "--tta", "2",
                       "--limit-seconds", "0.2", "--naive-spots", "2", "--device", "cpu",
                       "--threads", str(torch.get_num_threads())]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    m = LINE.fullmatch(out[-1])
    assert m, out[-1]
    b, a, c = (float(m[k]) for k in "bac")
    assert min(a, b, c) > 0 and float(m["m"]) > 0
    assert abs(float(m["vl"]) - b / a) < 0.01 and abs(float(m["vn"]) - b / c) < 0.01
    assert "2 views" in out[0] and "over 1 slides (98 views" in "\n".join(out)
