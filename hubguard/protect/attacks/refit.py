"""Attacks that train: a short re-fine-tune of the released update before merging, and fine-tuning the merge."""

from __future__ import annotations

from typing import Any

from hubguard.protect.attacks.base import AttackSetting
from hubguard.protect.attacks.merging import task_arithmetic_over
from hubguard.protect.merges import changed_names


def refinetune(setting: AttackSetting) -> dict[str, Any]:
    """Fine-tune the protected update on its task (the tensors it changed, `attacker.epochs` epochs at
    `attacker.lr`), then task arithmetic with the others. With no update (the base in its place,
    `without_update_baselines`), the attacker fine-tunes the base itself, on the tensors the other updates change."""
    attacker = setting.needs("attacker", "refinetune")
    names = changed_names(setting.base, [setting.protected]) or changed_names(setting.base, list(setting.others))
    data = attacker.refit_data if attacker.refit_data is not None else attacker.data[0]
    refit = attacker.finetune(setting.protected, batches=data, names=names)
    out = task_arithmetic_over(setting, [refit, *setting.others], name="refinetune")
    out["standalone_after"] = {k: float(v) for k, v in setting.test_metrics(refit).items()}
    return out


def finetune_after_merge(setting: AttackSetting) -> dict[str, Any]:
    """Task arithmetic at the attacker's best coefficient, then the merge fine-tuned on the attacker's data of every
    task (interleaved), training the tensors the merge changed."""
    attacker = setting.needs("attacker", "finetune_after_merge")
    from hubguard.protect.merges import merge_states

    merged = task_arithmetic_over(setting, [setting.protected, *setting.others])
    c = merged["coefficient"]
    models = [setting.protected, *setting.others]
    state = merge_states("task_arithmetic", base=setting.base, models=models, weights=[c] * len(models))
    longest = max(len(d) for d in attacker.data)
    batches = [d[i] for i in range(longest) for d in attacker.data if i < len(d)]
    tuned = attacker.finetune(state, batches=batches, names=changed_names(setting.base, [state]))
    return {"method": "finetune_after_merge", "coefficient": c, "val_score": float(setting.val_score(tuned)),
            "test": {k: float(v) for k, v in setting.test_metrics(tuned).items()}, "merged_before": merged["test"]}
