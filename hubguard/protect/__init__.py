"""Merge protection: Trap² training and hubguard's scale lock make updates that work alone and break when
merged; the audit attacks them with real merge tools.

Imports are lazy so `import hubguard` stays fast; the names below load their module on first use.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "ProtectConfig": "hubguard.protect.config",
    "trap2_loss": "hubguard.protect.objective",
    "sample_scale": "hubguard.protect.objective",
    "scale_weight": "hubguard.protect.objective",
    "attach_lora": "hubguard.protect.trainer",
    "train_protected": "hubguard.protect.trainer",
    "make_trap2_trainer": "hubguard.protect.trainer",
    "trap2_trainer_class": "hubguard.protect.trainer",
    "run_audit": "hubguard.protect.audit",
    "AuditReport": "hubguard.protect.audit",
    "scale_sweep": "hubguard.protect.sweep",
    "plot_sweep": "hubguard.protect.plot",
    "merge_states": "hubguard.protect.merges",
    "mergekit_merge": "hubguard.protect.merges",
    "run_attacks": "hubguard.protect.attacks",
    "AttackSetting": "hubguard.protect.attacks",
    "AttackerModel": "hubguard.protect.attacks",
    "ATTACKS": "hubguard.protect.attacks",
    "protect_main": "hubguard.protect.run",
    "lock_main": "hubguard.protect.run",
    "audit_main": "hubguard.protect.run",
    "write_protection_card": "hubguard.protect.card",
    "read_protection": "hubguard.protect.card",
    "LockConfig": "hubguard.protect.lock",
    "plan_lock": "hubguard.protect.lock",
    "apply_lock": "hubguard.protect.lock",
    "realign_state_dict": "hubguard.protect.realign",
    "realign_layer": "hubguard.protect.realign",
    "lock_update": "hubguard.protect.lock_adapter",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hubguard.protect' has no attribute {name!r}")
