"""Teacher and student networks, presets, and import of published checkpoints."""

from __future__ import annotations

from tscm.models.official import load_official
from tscm.models.presets import build_model, get_preset, list_presets, model_config_from_dict, model_config_to_dict
from tscm.models.student import Student, StudentConfig
from tscm.models.teacher import Teacher, TeacherConfig

__all__ = [
    "Student",
    "StudentConfig",
    "Teacher",
    "TeacherConfig",
    "build_model",
    "get_preset",
    "list_presets",
    "load_official",
    "model_config_from_dict",
    "model_config_to_dict",
]
