"""Experiment tracking: params, metrics with steps, tags, search/sort, and the Trainer callback."""

from __future__ import annotations

import pytest
import torch

from lorareg.errors import LoraregError


def test_params_metrics_tags_and_search(reg, llama, tmp_path):
    from tests.support.factories import make_llama

    a = reg.add_base(path=llama, name="llama")
    b = reg.add_base(path=make_llama(tmp_path / "b", seed=3), name="llama")
    reg.log_params(ref=a.ref, params={"lr": 1e-4, "epochs": 3})
    reg.log_params(ref=b.ref, params={"lr": 2e-4, "epochs": 3})
    reg.log_metrics(ref=a.ref, metrics={"eval_loss": 2.0}, step=10)
    reg.log_metrics(ref=a.ref, metrics={"eval_loss": 1.5}, step=20)
    reg.log_metrics(ref=b.ref, metrics={"eval_loss": 1.7}, step=20)
    reg.set_tags(ref=a.ref, tags={"stage": "candidate"})
    reg.set_tags(ref=b.ref, tags={"stage": "candidate"})
    t = reg.tracked(ref=a.ref)
    assert t.params == {"lr": 1e-4, "epochs": 3} and t.metrics == {"eval_loss": 1.5}
    assert [(p.step, p.value) for p in t.history] == [(10, 2.0), (20, 1.5)]
    ranked = reg.search(tags={"stage": "candidate"}, order_by="metric:eval_loss")
    assert [hit.ref for hit in ranked] == [a.ref, b.ref]
    assert [hit.ref for hit in reg.search(params={"lr": 2e-4})] == [b.ref]
    assert [hit.ref for hit in reg.search(order_by="param:lr", descending=True)] == [b.ref, a.ref]
    with pytest.raises(LoraregError):
        reg.log_metrics(ref=a.ref, metrics={"loss": float("nan")})
    with pytest.raises(LoraregError):
        reg.search(order_by="loss")


def test_trainer_callback_registers_checkpoints(reg, llama, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    reg.add_base(path=llama, name="llama")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(llama, dtype=torch.float32),
                           LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    ids = torch.randint(4, 128, (8, 12), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": row, "labels": row} for row in ids]
    args = TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, max_steps=4,
                             save_steps=2, logging_steps=1, learning_rate=1e-2, report_to=[], use_cpu=True,
                             disable_tqdm=True)
    callback = reg.trainer_callback(base="llama", name="run", tags={"experiment": "demo"})
    Trainer(model=model, args=args, train_dataset=data, callbacks=[callback]).train()
    refs = [v.ref for v in reg.ls(kind="adapter")]
    assert refs == ["run@1", "run@2"]
    t = reg.tracked(ref="run@2")
    assert t.tags == {"checkpoint": "4", "experiment": "demo"}
    assert t.params["learning_rate"] == 1e-2 and t.params["global_step"] == 4
    assert "loss" in t.metrics and {p.step for p in t.history if p.key == "loss"} >= {1, 2, 3, 4}


def test_ls_pages_and_counts(reg, llama, tmp_path):
    from tests.support.factories import make_llama

    reg.add_base(path=llama, name="llama")
    for i in range(3):
        reg.add_base(path=make_llama(tmp_path / f"b{i}", seed=300 + i, layers=1), name="other")
    everything = [v.ref for v in reg.ls()]
    assert reg.count() == 4 and reg.count(name="other") == 3 and reg.count(kind="adapter") == 0
    assert [v.ref for v in reg.ls(limit=2)] + [v.ref for v in reg.ls(limit=2, offset=2)] == everything
    assert [v.ref for v in reg.ls(name="other", limit=1, offset=1)] == ["other@2"]
