"""Prometheus metrics every service exposes on its metrics port (``/metrics``)."""

from prometheus_client import Counter, Gauge, Histogram, Info

RECORDS_IN = Counter("srlm_records_in_total", "Kafka records consumed", ["service", "topic"])
RECORDS_OUT = Counter("srlm_records_out_total", "Kafka records produced", ["service", "topic"])
DUPLICATES = Counter("srlm_duplicates_total", "Replayed records recognised by id and skipped", ["service"])
ERRORS = Counter("srlm_errors_total", "Errors by kind", ["service", "kind"])
BATCH_SECONDS = Histogram("srlm_batch_seconds", "Time to process one batch of records", ["service"],
                          buckets=(0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600))
GENERATED_TOKENS = Counter("srlm_generated_tokens_total", "Tokens generated", ["service"])
TOKENS_PER_SECOND = Gauge("srlm_tokens_per_second", "Output tokens/s of the last generation batch", ["service"])
JUDGMENTS = Counter("srlm_judgments_total", "Judge samples, by whether a score was parsed", ["parsed"])
JUDGE_PARSE_RATE = Gauge("srlm_judge_parse_rate", "Share of judge samples with a parsed score (last batch)")
MODEL_VERSION = Info("srlm_model", "Model version currently served")
MODEL_LOAD_SECONDS = Histogram("srlm_model_load_seconds", "Time to load a model version", ["service"],
                               buckets=(0.5, 1, 2, 5, 10, 20, 60, 120))
EVAL_METRIC = Gauge("srlm_eval_metric", "Evaluation suite figure of a model version (value and its 95% interval)",
                    ["version", "metric", "bound"])
