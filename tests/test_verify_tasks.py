"""reproduce/verify.py --tasks: names resolve like the data layer's (data/tasks.py resolve_task: aliases, TFDS
names, any case); an unknown name is one error line naming --tasks, the name and the closest valid id, exit 2."""
from __future__ import annotations

import json
from pathlib import Path

from reproduce import tables, tasks as K, verify


def _sweep(tmp_path: Path) -> Path:
    """An hta_vtab sweep whose every task reproduces HTA Table 1 exactly (config inferred from the folder name)."""
    paper = tables.find("HTA", "Table 1", "vit_b16_in21k", "HTA").values
    root = tmp_path / "hta_vtab"
    for t in K.VTAB_TASKS:
        d = root / t / "seed42"
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps({
            "method": "hta", "arch": "vit_base_patch16_224", "dataset": t, "benchmark": "vtab", "protocol": "paper",
            "seed": 42, "pretrained": {"source": "vit_base_patch16_224.orig_in21k"}, "acc_best_test": paper[t],
            "acc_last": paper[t], "params_trainable": 200_000, "params_trainable_no_head": 184_320}))
    return root


def _task_rows(out: str) -> list[str]:
    return [line.split()[0] for line in out.splitlines() if line and line.split()[0] in K.VTAB]


def test_tasks_accept_the_data_layer_aliases(tmp_path, capsys):
    root = _sweep(tmp_path)
    names = ['CIFAR-100,svhn_cropped', 'Flowers102 sNORB-Azim', 'clevr(task="count_all")',
             'dsprites(predicted_attribute="label_x_position",num_classes=16),eurosat/rgb:2.*.*', 'cifar']
    assert verify.main([str(root), "--strict", "--tasks", *names]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert _task_rows(captured.out) == ["cifar", "svhn", "oxford_flowers102", "smallnorb_azi", "clevr_count",
                                        "dsprites_loc", "eurosat"]  # canonical ids, given order, no duplicate
    assert "Missing results" not in captured.out


def test_unknown_task_is_one_error_line_with_the_closest_name(tmp_path, capsys):
    root = _sweep(tmp_path)
    assert verify.main([str(root), "--tasks", "cifar,svhm"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: --tasks: unknown task 'svhm'.") and "Did you mean 'svhn'?" in lines[0]
    # a valid name of another benchmark: not in this config, same one-line form
    assert verify.main([str(root), "--tasks", "CUB_200_2011"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --tasks: task 'CUB_200_2011' is not in this config")
