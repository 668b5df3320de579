"""tscm: visual place recognition by teacher-student cross-metric distillation."""

__version__ = "0.1.0"
