"""Reading Prometheus text the way a scraper does, for tests of /metrics."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

# Every admin route behind the token (the liveness probe is the one public route).
ADMIN_ROUTES = [
    ("GET", "/admin/api/health"),
    ("GET", "/admin/api/sessions"),
    ("GET", "/admin/api/sessions/someone"),
    ("DELETE", "/admin/api/sessions/someone"),
    ("GET", "/admin/api/queue"),
    ("GET", "/admin/api/config"),
    ("GET", "/admin/api/limits"),
    ("PUT", "/admin/api/limits/chat"),
]


def metric(text: str, name: str, **labels: str) -> float:
    """The sample ``name`` with these labels in a /metrics text; 0 when it is absent."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0
