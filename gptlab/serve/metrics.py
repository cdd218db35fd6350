"""GET /metrics: the server's state in Prometheus's text format, through prometheus_client.

One CollectorRegistry per app (not the library's global one), so two apps in one process (tests, or
an embedding program) count apart. Counters and histograms are updated as requests go by; the
engines' gauges (queue depth, slots in use) are read from the engines when scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# (model, slots, slots in use, requests waiting for a slot)
EngineLoad = tuple[str, int, int, int]
# A small model's first token takes milliseconds alone and seconds in a long queue.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _EngineGauges(Collector):
    def __init__(self, load: Callable[[], list[EngineLoad]], in_flight: Callable[[], int]):
        self.load = load
        self.in_flight = in_flight

    def collect(self) -> Iterator[GaugeMetricFamily]:
        slots = GaugeMetricFamily("gptlab_slots", "decoding slots of each loaded model's engine", labels=["model"])
        used = GaugeMetricFamily("gptlab_slots_in_use", "slots holding a request", labels=["model"])
        queue = GaugeMetricFamily("gptlab_queue_depth", "requests waiting for a slot", labels=["model"])
        for name, n_slots, n_used, n_waiting in self.load():
            slots.add_metric([name], n_slots)
            used.add_metric([name], n_used)
            queue.add_metric([name], n_waiting)
        yield from (slots, used, queue)
        yield GaugeMetricFamily("gptlab_in_flight", "requests admitted and not finished, every route",
                                value=self.in_flight())

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())  # no collect() at registration: the engines may not exist yet


class Metrics:
    def __init__(self, load: Callable[[], list[EngineLoad]], in_flight: Callable[[], int]):
        self.registry = CollectorRegistry()
        self.requests = Counter("gptlab_requests", "requests answered, by route and HTTP status",
                                ["route", "status"], registry=self.registry)
        self.tokens = Counter("gptlab_generated_tokens", "tokens generated (its rate() is tokens per second)",
                              ["model"], registry=self.registry)
        self.ttft = Histogram("gptlab_time_to_first_token_seconds", "from a completion's arrival to its first token",
                              ["model"], buckets=TTFT_BUCKETS, registry=self.registry)
        self.registry.register(_EngineGauges(load, in_flight))

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of a scrape."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
