"""benchmarks/paper_tables.py end to end on the tiny models, and the metrics glue of benchmarks/metrics.py."""

import json
import math

import numpy as np
import pytest
import torch

from benchmarks import metrics, paper_tables

PARALLEL = ("FP", "FP+", "ParaTAA-m2", "ParaTAA-m3", "ParaDiGMS")


def _check_rows(report, saved, scenarios, quality_keys):
    assert saved["meaningless"] is True and report["meaningless"] is True
    assert [s["scenario"] for s in saved["scenarios"]] == scenarios
    for scenario in saved["scenarios"]:
        by_method = {r["method"]: r for r in scenario["rows"]}
        assert list(by_method) == list(paper_tables.ALL_METHODS)
        T = scenario["num_steps"]
        for name, row in by_method.items():
            for key in ("steps", "seconds_per_batch", "speedup", "max_abs_diff", "psnr_db", *quality_keys):
                assert isinstance(row[key], (int, float)) and math.isfinite(row[key]), (scenario["scenario"], name, key)
            assert row["converged"] and 1 <= row["steps"] <= T
        assert by_method["sequential"]["steps"] == T and by_method["sequential"]["max_abs_diff"] == 0
        # converged parallel solves reproduce the sequential latents (ParaDiGMS at its loose tolerance 0.1 less so)
        assert by_method["FP"]["psnr_db"] > 90  # T iterations: exact up to float32 batch-composition noise
        for name in ("FP+", "ParaTAA-m2", "ParaTAA-m3"):
            assert by_method[name]["psnr_db"] > 70, (scenario["scenario"], name)
            assert by_method[name]["steps"] < T
        assert by_method["ParaDiGMS"]["psnr_db"] > 40


def test_dit_smoke_every_scenario_and_method(tmp_path, capsys):
    out = tmp_path / "dit.json"
    report = paper_tables.main(["--model", "dit", "--model_path", "tiny", "--feature_extractor", "tiny-random",
                                "--reference_images", "random", "--num_samples", "4", "--out", str(out)])
    saved = json.loads(out.read_text())
    _check_rows(report, saved, ["ddim25", "ddim50", "ddim100", "ddpm100"], ("fid", "is_mean", "is_std"))
    assert any("tiny-random feature extractor" in r for r in saved["meaningless_reasons"])
    printed = capsys.readouterr().out
    assert "MEANINGLESS" in printed and "FID (MEANINGLESS)" in printed and "| ParaTAA-m2 |" in printed


def test_sd_smoke_clip_score_and_batches(tmp_path, capsys):
    out = tmp_path / "sd.json"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\n\na blue ball on grass\na cat\n")
    paper_tables.main(["--model", "sd", "--model_path", "tiny", "--clip_model", "tiny", "--scenarios", "ddim25",
                       "--num_samples", "3", "--batch_size", "2", "--prompts_file", str(prompts), "--out", str(out)])
    saved = json.loads(out.read_text())
    _check_rows(saved, saved, ["ddim25"], ("clip_score",))
    assert "tiny random CLIP model" in saved["meaningless_reasons"]
    rows = saved["scenarios"][0]["rows"]
    assert all(r["evaluations"] > 0 for r in rows) and rows[0]["evaluations"] == 25 * 3
    assert "CLIP score (MEANINGLESS)" in capsys.readouterr().out


def test_methods_subset_keeps_hidden_sequential_reference(tmp_path):
    out = tmp_path / "sub.json"
    paper_tables.main(["--model", "dit", "--model_path", "tiny", "--scenarios", "ddim10", "--methods", "ParaTAA-m2",
                       "--num_samples", "2", "--no_quality", "--out", str(out)])
    (row,) = json.loads(out.read_text())["scenarios"][0]["rows"]
    assert row["method"] == "ParaTAA-m2" and row["speedup"] > 0 and row["psnr_db"] > 70


@pytest.mark.parametrize("bad", [["--scenarios", "euler50"], ["--methods", "FP,magic"], ["--num_samples", "0"]])
def test_bad_arguments(bad):
    with pytest.raises(SystemExit):
        paper_tables.main(["--model", "dit", *bad])


def test_reference_npz_images_and_moments(tmp_path):
    extractors = metrics.build_feature_extractors("tiny-random")
    images = np.random.default_rng(0).integers(0, 256, (5, 24, 24, 3), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", arr_0=images)
    stats = metrics.load_reference(str(tmp_path / "ref.npz"), extractors, batch_size=2)
    assert stats.num_samples == 5 and not stats.meaningless
    # the same images as generated samples: FID ~ 0
    quality = metrics.ImageQuality(extractors, stats)
    quality.update(torch.from_numpy(images).permute(0, 3, 1, 2))
    assert abs(quality.compute()["fid"]) < 1e-3
    # precomputed moments (ADM reference batches) give the same statistics
    mu = (stats.features_sum / 5).numpy()
    sigma = ((stats.features_cov_sum - 5 * torch.outer(stats.features_sum / 5, stats.features_sum / 5)) / 4).numpy()
    np.savez(tmp_path / "moments.npz", mu=mu, sigma=sigma)
    moments = metrics.load_reference(str(tmp_path / "moments.npz"), extractors)
    quality = metrics.ImageQuality(extractors, moments)
    quality.update(torch.from_numpy(images).permute(0, 3, 1, 2))
    assert abs(quality.compute()["fid"]) < 1e-3


def test_clip_score_definition():
    scorer = metrics.CLIPScorer("tiny")
    images = torch.randint(0, 256, (3, 3, 40, 30), dtype=torch.uint8)
    texts = ["a cat", "a dog on a sofa", "a red car"]
    scores = scorer.scores(images, texts)
    with torch.no_grad():
        tokens = scorer.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        image_emb = scorer.model.get_image_features(pixel_values=scorer._pixels(images)).pooler_output
        text_emb = scorer.model.get_text_features(**tokens).pooler_output
    expected = 100 * torch.nn.functional.cosine_similarity(image_emb, text_emb, dim=-1).clamp(min=0)
    torch.testing.assert_close(scores, expected)
    assert scorer.meaningless and scores.shape == (3,) and (scores >= 0).all() and (scores <= 100).all()
