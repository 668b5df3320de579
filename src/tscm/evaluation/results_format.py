"""The name and header of a run's results file, shared by its writer (`experiments/report`) and its
readers below the experiments (`deploy/packaging/model_card` quotes a run's numbers in a model card).
"""

from __future__ import annotations

RESULTS_JSON = "results.json"
RESULTS_FORMAT = "tscm-results"
RESULTS_FORMAT_VERSION = 2
