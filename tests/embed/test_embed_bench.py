"""The stage-1 benchmark (embed.bench.embed) runs end to end on the tiny model and prints its
machine-readable last line, with a local weights file as the backbone's source, and with
a whole-slide workload (the synthetic file standing in for the C2 grid)."""

from __future__ import annotations

import re

import torch
from safetensors.torch import save_file

from embed.backbones import get_backbone
from embed.bench import embed as bench
from embed.weights import build_model

LINE = re.compile(r"bench-embed views_per_s=(?P<b>[\d.]+) limit_views_per_s=(?P<a>[\d.]+) "
                  r"naive_views_per_s=(?P<c>[\d.]+) vs_limit=(?P<vl>[\d.]+) "
                  r"vs_naive=(?P<vn>[\d.]+) peak_rss_mb=(?P<m>\d+) startup_s=(?P<s>[\d.]+) "
                  r"steady_vs_limit=(?P<sv>[\d.]+) model_spots_per_s=(?P<ms>[\d.]+) "
                  r"feed1_spots_per_s=(?P<f1>\d+) feed2_spots_per_s=(?P<f2>\d+) "
                  r"slide_views_per_s=(?P<d>[\d.]+) slide_vs_limit=(?P<dl>[\d.]+)")


def test_bench_prints_its_summary_line(synthetic_h5, tmp_path, capsys):
    model, _ = build_model(get_backbone("tiny_random"))
    weights = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    assert bench.main(["--h5", str(synthetic_h5), "--backbone", "tiny_random",
                       "--weights", str(weights), "--slides", "S_1", "--tta", "2",
                       "--limit-seconds", "0.2", "--naive-spots", "2", "--device", "cpu",
                       "--grid-h5", str(synthetic_h5), "--grid-spots", "12",
                       "--feed-spots", "40",
                       "--threads", str(torch.get_num_threads())]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    m = LINE.fullmatch(out[-1])
    assert m, out[-1]
    b, a, c = (float(m[k]) for k in "bac")
    assert min(a, b, c) > 0 and float(m["m"]) > 0
    assert abs(float(m["vl"]) - b / a) < 0.01 and abs(float(m["vn"]) - b / c) < 0.01
    assert abs(float(m["ms"]) - a / 2) < 0.1  # the model's spots/s: its views/s / views
    assert float(m["s"]) > 0 and float(m["sv"]) > 0 and float(m["d"]) > 0
    assert int(m["f1"]) > 0 and int(m["f2"]) > 0
    text = "\n".join(out)
    assert "2 views" in out[0] and "(b) sample (1 slides)" in text and "over 98 views" in text
    # the whole slide: its first 12 spots of each of the 4 slides, 2 views
    assert "(d) whole slide" in text and "over 96 views" in text
